"""The middle of llmhost: typed requests and results, and the one pipeline every door calls."""
