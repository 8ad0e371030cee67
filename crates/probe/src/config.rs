//! Why a probe setting was refused, as a type a caller can match on.

use thiserror::Error;

/// A probe or throughput setting out of range; the message names it.
#[derive(Clone, Debug, PartialEq, Error)]
pub enum ConfigError {
    #[error(
        "payload size {size} is out of range {min}..={max} bytes (the probe header takes {min})"
    )]
    PayloadSize { size: usize, min: usize, max: usize },
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("rates must satisfy 0 < min_rate ({min}) <= max_rate ({max})")]
    Rates { min: u64, max: u64 },
    #[error("precision {0} must be between 0 and 1")]
    Precision(f64),
    #[error("step duration must be positive")]
    ZeroStep,
    #[error("max_steps {0} must be at least 2")]
    MaxSteps(u32),
    #[error("batch {0} is out of range 1..=1024")]
    Batch(usize),
    #[error("no payload sizes given")]
    NoSizes,
    #[error("nothing to measure: 0 latency repetitions and no throughput search")]
    NothingToMeasure,
}

impl From<ConfigError> for std::io::Error {
    /// An `InvalidInput` I/O error carrying the [`ConfigError`] (get it back
    /// with `get_ref()` and `downcast_ref`).
    fn from(e: ConfigError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// A probe payload holds the probe header and fits one UDP datagram.
pub(crate) fn payload_len_ok(size: usize) -> Result<(), ConfigError> {
    use crate::payload::HEADER_LEN;
    use crate::rtt::MAX_PAYLOAD;
    if (HEADER_LEN..=MAX_PAYLOAD).contains(&size) {
        Ok(())
    } else {
        Err(ConfigError::PayloadSize { size, min: HEADER_LEN, max: MAX_PAYLOAD })
    }
}
