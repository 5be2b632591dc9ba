"""The admin web app: probes, metrics, auth, the JSON API and the report pages."""
