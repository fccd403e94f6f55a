"""Meta's WhatsApp Cloud API: webhook payloads, signatures and the Graph API client."""
