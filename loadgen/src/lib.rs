//! Load generator: `paycore-loadgen` drives a node over QUIC, closed- or open-loop, and reports
//! throughput and HdrHistogram latency without coordinated omission.
//!
//! **Not built yet** (issue 4). Until then the engine's speed is measured by the criterion
//! benches in `benches/`.

#![forbid(unsafe_code)]
