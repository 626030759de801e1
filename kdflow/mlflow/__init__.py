"""MLflow: one client (retries, URIs, tags), tracking of pipeline runs, the model registry,
and the pyfunc the registered student loads through."""
