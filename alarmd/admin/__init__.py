"""Case management: service users, plans, decisions, devices, orders, faults, deviations
and retention (issue 9). Domain functions; the API (``api/casework.py``) exposes them."""
