"""How a ticket's mask is found: one module per method, found by name in ``registry``."""
