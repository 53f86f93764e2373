"""The servers tabserve is compared with: the no-op floor, the "typical" FastAPI baseline, MLServer."""
