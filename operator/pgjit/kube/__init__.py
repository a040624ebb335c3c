"""The Kubernetes side of pgjit: Secrets, ConfigMaps and engines built from Database objects."""
