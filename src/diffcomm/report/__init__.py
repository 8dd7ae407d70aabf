"""What a run writes: tidy tables (`tables`), figures (`figures`) and readable reports (`markdown`)."""
