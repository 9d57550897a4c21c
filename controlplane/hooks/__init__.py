"""Telling users what happened: webhooks (signed HTTP deliveries, retried) and notifications."""
