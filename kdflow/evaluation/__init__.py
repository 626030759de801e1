"""Quality metrics, CPU timing, the gates, and the evaluate step's run summary."""
