//! How many bytes of PDF one worker's running jobs hold at once. Concurrency
//! (`SHOMEI_WORKER_CONCURRENCY`) counts jobs, which suits the contracts of a few hundred
//! kilobytes the workers mostly see; a burst of 50 MB uploads at the same concurrency would hold
//! gigabytes (a job holds its revision, lopdf's parse of it and the signed copy). Every job that
//! works on a revision first waits for its share of this budget (`crate::revisions::begin`)
//! (`SHOMEI_WORKER_PDF_BYTES`), and gives it back when it finishes. A revision larger than the
//! whole budget waits until it can hold all of it: it then runs alone, never not at all.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::JobError;

/// Shares are counted in KiB: a semaphore hands out at most `u32::MAX` permits at once.
const UNIT: u64 = 1024;

/// The budget; clones share it.
#[derive(Debug, Clone)]
pub struct DocumentMemory {
    units: Arc<Semaphore>,
    total: u32,
}

/// A running job's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct DocumentShare {
    _permit: OwnedSemaphorePermit,
}

impl DocumentMemory {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: u64) -> Self {
        let total = units(bytes).max(1);
        Self {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` fit beside what the other running jobs hold (all of the budget, if
    /// `bytes` is more than that).
    pub async fn hold(&self, bytes: u64) -> Result<DocumentShare, JobError> {
        let permit = self
            .units
            .clone()
            .acquire_many_owned(units(bytes).clamp(1, self.total))
            .await
            .map_err(|_| JobError::transient("the worker is shutting down"))?;
        Ok(DocumentShare { _permit: permit })
    }

    /// Bytes no running job holds.
    #[cfg(test)]
    fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1024 * 1024;

    async fn waits(memory: &DocumentMemory, bytes: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(50), memory.hold(bytes))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_share_waits_until_it_fits_beside_the_others() {
        let memory = DocumentMemory::new(4 * MIB);
        let first = memory.hold(3 * MIB).await.unwrap();
        assert_eq!(memory.available(), MIB);
        let _small = memory.hold(512 * 1024).await.unwrap();
        assert!(
            waits(&memory, MIB).await,
            "1 MiB fitted in the 0.5 MiB left"
        );
        drop(first);
        assert!(
            !waits(&memory, MIB).await,
            "1 MiB did not fit in the 3.5 MiB left"
        );
    }

    #[tokio::test]
    async fn a_document_larger_than_the_budget_runs_alone() {
        let memory = DocumentMemory::new(4 * MIB);
        let large = memory.hold(50 * MIB).await.unwrap();
        assert_eq!(memory.available(), 0);
        assert!(waits(&memory, 1).await, "a job ran beside the large one");
        drop(large);
        let small = memory.hold(MIB).await.unwrap();
        assert!(
            waits(&memory, 50 * MIB).await,
            "the large one ran beside another"
        );
        drop(small);
        memory.hold(50 * MIB).await.unwrap();
    }

    #[tokio::test]
    async fn even_an_empty_revision_takes_a_share() {
        let memory = DocumentMemory::new(1);
        let _empty = memory.hold(0).await.unwrap();
        assert!(waits(&memory, 0).await);
    }
}
