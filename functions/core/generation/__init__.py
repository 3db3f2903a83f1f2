"""Text generation: OpenAI chat/completions schemas, the light/heavy/async router, the heavy client and breaker, the use cases."""
