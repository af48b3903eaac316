"""The DINOv browser demo: a standard-library HTTP server (127.0.0.1 only) and a static page."""
