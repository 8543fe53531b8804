"""The arms of the experiment (the ticket and its controls): one module each, by name in
``registry``."""
