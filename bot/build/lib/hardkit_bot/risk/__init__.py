"""The risk guard: pre-trade pipeline, trading state machine, circuit breakers."""
