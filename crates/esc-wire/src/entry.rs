//! The replicated log entry (architecture section 3).
//!
//! ```text
//! +----------------+----------------+--------+------------------+
//! | epoch (u64 LE) | index (u64 LE) | crc32c | payload (opaque) |
//! +----------------+----------------+--------+------------------+
//! crc32c = crc32c(epoch LE ++ index LE ++ payload)
//! ```
//! The same bytes are stored in the log table and carried in `Append`
//! frames, so an entry's checksum is verified wherever it is read.

use serde::{Deserialize, Serialize};

/// Largest payload of one entry: a command with its body.
pub const MAX_PAYLOAD_BYTES: usize = 4 << 20;
/// Bytes of an encoded entry before its payload.
pub const ENTRY_HEADER_LEN: usize = 20;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: u64,
    pub index: u64,
    pub crc: u32,
    pub payload: Vec<u8>,
}

/// Why stored or received entry bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry shorter than its {ENTRY_HEADER_LEN}-byte header ({0} bytes)")]
    Short(usize),
    #[error("entry payload of {0} bytes exceeds {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("entry {index} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        index: u64,
        stored: u32,
        computed: u32,
    },
}

impl Entry {
    /// Builds an entry and computes its checksum.
    pub fn new(epoch: u64, index: u64, payload: Vec<u8>) -> Entry {
        let crc = Self::checksum(epoch, index, &payload);
        Entry {
            epoch,
            index,
            crc,
            payload,
        }
    }

    /// crc32c over epoch, index and payload.
    pub fn checksum(epoch: u64, index: u64, payload: &[u8]) -> u32 {
        let mut head = [0u8; 16];
        head[..8].copy_from_slice(&epoch.to_le_bytes());
        head[8..].copy_from_slice(&index.to_le_bytes());
        crc32c::crc32c_append(crc32c::crc32c(&head), payload)
    }

    /// Checks the stored checksum against the content.
    pub fn verify(&self) -> Result<(), EntryError> {
        if self.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(EntryError::TooLarge(self.payload.len()));
        }
        let computed = Self::checksum(self.epoch, self.index, &self.payload);
        if computed != self.crc {
            return Err(EntryError::Checksum {
                index: self.index,
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }

    /// Encodes as stored in the log table.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes stored bytes and verifies the checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() < ENTRY_HEADER_LEN {
            return Err(EntryError::Short(bytes.len()));
        }
        let (head, payload) = bytes.split_at(ENTRY_HEADER_LEN);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&head[16..20]);
        let entry = Entry {
            epoch: u64_at(0),
            index: u64_at(8),
            crc: u32::from_le_bytes(crc),
            payload: payload.to_vec(),
        };
        entry.verify()?;
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_byte_layout() {
        let e = Entry::new(2, 7, b"abc".to_vec());
        let bytes = e.to_bytes();
        assert_eq!(&bytes[..8], &2u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &7u64.to_le_bytes());
        assert_eq!(&bytes[20..], b"abc");
        assert_eq!(Entry::from_bytes(&bytes).unwrap(), e);
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let bytes = Entry::new(3, 9, vec![0x55; 64]).to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                Entry::from_bytes(&b).is_err(),
                "flip at byte {i} undetected"
            );
        }
        assert_eq!(Entry::from_bytes(&bytes[..5]), Err(EntryError::Short(5)));
    }
}
