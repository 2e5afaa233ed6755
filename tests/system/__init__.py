"""Real servers, really started: the examples, the README, the demo, shared stores."""
