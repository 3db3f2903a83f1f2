"""The HTTP layer: the Powertools app, request-body parsing, routes per area, and response building."""
