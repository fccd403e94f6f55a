"""The model side of the bot: OpenAI Responses API client, FAQ grounding and fallback, and the
Redis token bucket that keeps each agent under its OpenAI rate limit."""
