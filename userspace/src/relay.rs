//! Bidirectional byte relay with adaptive buffers, half-close and backpressure.
