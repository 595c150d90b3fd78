"""Moving bytes and walking models: arrays, frameworks, formats, matcher, plan, engine, verify."""
