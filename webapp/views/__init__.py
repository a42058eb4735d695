"""The blueprints: pages, the JSON API, the Open Inference Protocol, the admin area."""
