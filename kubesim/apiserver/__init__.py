"""kubesim's HTTP Kubernetes API server (see server.ApiServer)."""
