//! The storage suite every backend must pass. A backend's test module calls
//! `store_suite!(expression that makes a fresh, empty store)`.

use std::collections::BTreeMap;

use super::{Cursor, DatasetQuery, Store};
use crate::datasets::model::{DatasetRecord, DatasetState, Lineage};
use crate::datasets::report::{DatasetStats, Purpose, ValidationReport};

pub fn dataset(id: &str, created_at: i64, purpose: Option<Purpose>) -> DatasetRecord {
    let mut metadata = BTreeMap::new();
    metadata.insert("team".to_string(), "search".to_string());
    DatasetRecord {
        id: id.to_string(),
        filename: "train.jsonl".to_string(),
        display_name: "Train".to_string(),
        purpose: purpose.unwrap_or(Purpose::Sft),
        state: DatasetState::Ready,
        bytes: 1234,
        sha256: format!("{:0>64}", created_at),
        created_at,
        metadata,
        report: ValidationReport {
            total_rows: 12,
            valid_rows: 12,
            ..Default::default()
        },
        stats: DatasetStats {
            rows: 12,
            tokenizer: "o200k_base".to_string(),
            ..Default::default()
        },
        lineage: None,
    }
}

fn id(n: u32) -> String {
    format!("ds_{n:026}")
}

pub async fn insert_get_roundtrip(store: impl Store) {
    let mut record = dataset(&id(1), 1_700_000_000_000, Some(Purpose::Dpo));
    record.state = DatasetState::Failed;
    record.lineage = Some(Lineage {
        source_dataset_id: id(9),
        split: "validation".to_string(),
        validation_fraction: 0.25,
        seed: 7,
        stratify_by: Some("/label".to_string()),
    });
    store.insert_dataset(&record).await.unwrap();
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), Some(record));
    assert_eq!(store.get_dataset(&id(2)).await.unwrap(), None);
}

pub async fn insert_twice_conflicts(store: impl Store) {
    let record = dataset(&id(1), 5, None);
    store.insert_dataset(&record).await.unwrap();
    let err = store.insert_dataset(&record).await.unwrap_err();
    assert!(matches!(err, super::StoreError::Conflict(_)), "{err}");
    // The first row is untouched.
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), Some(record));
}

pub async fn list_pages_newest_first_without_gaps(store: impl Store) {
    // Several rows share a timestamp so the id tiebreak is exercised.
    for n in 0..25u32 {
        let purpose = if n % 3 == 0 { Purpose::Eval } else { Purpose::Sft };
        store
            .insert_dataset(&dataset(&id(n), 1000 + (n / 2) as i64, Some(purpose)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_datasets(&DatasetQuery {
                purpose: None,
                after: after.clone(),
                limit: 7,
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some(Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|d| d.id));
    }
    let mut expected: Vec<String> = (0..25).map(id).collect();
    expected.sort_by_key(|i| std::cmp::Reverse((1000 + (i[3..].parse::<i64>().unwrap() / 2), i.clone())));
    assert_eq!(seen, expected);

    let evals = store
        .list_datasets(&DatasetQuery {
            purpose: Some(Purpose::Eval),
            after: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(evals.len(), 9);
    assert!(evals.iter().all(|d| d.purpose == Purpose::Eval));
}

pub async fn delete_returns_record_once(store: impl Store) {
    let record = dataset(&id(1), 5, None);
    store.insert_dataset(&record).await.unwrap();
    assert_eq!(store.delete_dataset(&record.id).await.unwrap(), Some(record.clone()));
    assert_eq!(store.delete_dataset(&record.id).await.unwrap(), None);
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), None);
}

pub async fn blob_references_follow_rows(store: impl Store) {
    let mut a = dataset(&id(1), 5, None);
    let mut b = dataset(&id(2), 6, None);
    a.sha256 = "aa".repeat(32);
    b.sha256 = a.sha256.clone();
    store.insert_dataset(&a).await.unwrap();
    store.insert_dataset(&b).await.unwrap();
    assert_eq!(store.blobs_in_use().await.unwrap(), vec![a.sha256.clone()]);
    store.delete_dataset(&a.id).await.unwrap();
    assert!(store.blob_in_use(&a.sha256).await.unwrap());
    store.delete_dataset(&b.id).await.unwrap();
    assert!(!store.blob_in_use(&a.sha256).await.unwrap());
    assert!(store.blobs_in_use().await.unwrap().is_empty());
}

/// Expands to one test per suite function for a backend. `$make` is an
/// async expression giving `Option<store>`: a fresh, empty store, or None
/// when the backend is not available here (the test then passes vacuously,
/// which only a backend's own `$make` may decide, e.g. never under CI).
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@tests $make;
            insert_get_roundtrip,
            insert_twice_conflicts,
            list_pages_newest_first_without_gaps,
            delete_returns_record_once,
            blob_references_follow_rows
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        mod suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(store) = $make {
                        $crate::store::suite::$name(store).await;
                    }
                }
            )*
        }
    };
}
