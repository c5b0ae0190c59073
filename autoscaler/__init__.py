"""A compact Knative KPA autoscaler: sans-I/O config, window aggregation, decider and scaler."""
