"""HTTP routes per area (a Powertools Router each), included by functions/core/http/app.py."""
