"""The REST API under /api/v1 (Klein), in the JSON envelope of the API spec."""
