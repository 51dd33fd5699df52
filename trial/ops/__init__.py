"""What an operator's tools ask of a running app: readiness checks (service), Prometheus metrics
(metrics) and the JSON log lines with their request id (logs). No Flask here: the routes and the
request plumbing are in trial.views.ops."""
