"""The benchmarks' own smoke tests: their quick modes run and measure what they say."""
