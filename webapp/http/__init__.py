"""HTTP around the app: the worker that reads requests, upload limits and slots, errors,
security headers, metrics and the access log."""
