"""An embedded event broker for Python microservices."""
