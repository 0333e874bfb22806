"""Standard Webhooks: signing what flashsale sends and checking what it receives."""
