//! The prefetching loader: deterministic order and content, every sample once per epoch, bad
//! files skipped and counted, prefetch bounded and running ahead of a slow consumer, the RAM
//! cache.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use c2f_kernels::{Error, Result};
use c2f_train::data::cub;
use c2f_train::data::loader::{epoch_order, FileSource};
use c2f_train::data::synthetic::{write_cub_layout, Split, SyntheticConfig, SyntheticSet};
use c2f_train::data::{ImageSource, Item, Loader, LoaderConfig, Transform};

fn synthetic(len: usize, size: u32) -> Arc<SyntheticSet> {
    let cfg = SyntheticConfig {
        size,
        classes: 4,
        seed: 5,
        ..Default::default()
    };
    Arc::new(SyntheticSet::new(cfg, Split::Train, len).unwrap())
}

fn config(batch: usize, size: u32) -> LoaderConfig {
    LoaderConfig {
        seed: 99,
        ..LoaderConfig::new(batch, Transform::train(size))
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data_loader_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Counts loads; optionally sleeps in each.
struct Counting {
    inner: Arc<SyntheticSet>,
    loads: AtomicUsize,
    delay: Duration,
}

impl ImageSource for Counting {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn label(&self, index: usize) -> usize {
        self.inner.label(index)
    }
    fn name(&self, index: usize) -> String {
        self.inner.name(index)
    }
    fn load(&self, index: usize) -> Result<Item> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.inner.load(index)
    }
}

#[test]
fn order_is_deterministic_and_covers_every_sample_once() {
    let src = synthetic(23, 64);
    let loader = Loader::new(src.clone(), config(5, 32)).unwrap();
    assert_eq!(loader.batches_per_epoch(), 5);
    let mut orders = Vec::new();
    for epoch in 0..3 {
        let batches: Vec<_> = loader.epoch(epoch).collect();
        let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
        let seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, loader.order(epoch));
        let set: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(set.len(), 23);
        assert!(seen.iter().all(|&i| i < 23));
        for b in &batches {
            assert_eq!(b.images.len(), b.len() * 3 * 32 * 32);
            assert_eq!(b.size, 32);
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(b.labels[k], (i % 4) as i32);
            }
        }
        orders.push(seen);
    }
    assert_ne!(orders[0], orders[1]);
    assert_ne!(orders[1], orders[2]);
    // The same seed gives the same order in another loader; another seed another order.
    let again = Loader::new(src.clone(), config(5, 32)).unwrap();
    assert_eq!(again.order(1), orders[1]);
    let other = Loader::new(
        src.clone(),
        LoaderConfig {
            seed: 100,
            ..config(5, 32)
        },
    )
    .unwrap();
    assert_ne!(other.order(1), orders[1]);
    // Unshuffled: the identity.
    assert_eq!(epoch_order(6, 1, 3, false), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn batches_are_identical_whatever_the_threads() {
    let src = synthetic(12, 96);
    let run = |threads: usize, prefetch: usize| {
        let loader = Loader::new(
            src.clone(),
            LoaderConfig {
                threads,
                prefetch,
                ..config(4, 48)
            },
        )
        .unwrap();
        loader.epoch(3).collect::<Vec<_>>()
    };
    let a = run(0, 2);
    let b = run(1, 0);
    let c = run(3, 5);
    assert_eq!(a.len(), 3);
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        assert_eq!(x.indices, y.indices);
        assert_eq!(x.images, y.images);
        assert_eq!(x.images, z.images);
        assert_eq!(x.boxes, z.boxes);
        // Normalised real images, not zeros.
        let mean = x.images.iter().map(|v| v.abs()).sum::<f32>() / x.images.len() as f32;
        assert!(mean > 0.1, "{mean}");
    }
}

#[test]
fn boxes_and_labels_travel_with_the_images() {
    // A test transform that keeps the image as it is: the boxes come back unchanged.
    let src = synthetic(8, 64);
    let loader = Loader::new(
        src.clone(),
        LoaderConfig {
            shuffle: false,
            ..LoaderConfig::new(
                3,
                Transform::Test {
                    resize: 64,
                    size: 64,
                },
            )
        },
    )
    .unwrap();
    let mut n = 0;
    for b in loader.epoch(0) {
        for (k, &i) in b.indices.iter().enumerate() {
            let s = src.get(i);
            assert_eq!(b.boxes[k], Some(s.bbox));
            assert_eq!(b.labels[k], s.label as i32);
            n += 1;
        }
    }
    assert_eq!(n, 8);
    let one = loader.load_batch(&[5, 2], 0).unwrap();
    assert_eq!(one.indices, vec![5, 2]);
    assert_eq!(one.boxes[0], Some(src.get(5).bbox));
}

#[test]
fn corrupt_and_missing_files_are_skipped_reported_and_counted() {
    let dir = scratch("corrupt");
    let cfg = SyntheticConfig {
        size: 96,
        classes: 3,
        ..Default::default()
    };
    write_cub_layout(&dir, &cfg, 17, 0).unwrap();
    let ds = cub::open(&dir).unwrap();
    let mut samples = ds.train();
    assert_eq!(samples.len(), 17);
    // Three corrupt files (garbage, truncated, empty) and one that vanished after reading.
    std::fs::write(&samples[2].path, b"garbage").unwrap();
    let bytes = std::fs::read(&samples[7].path).unwrap();
    std::fs::write(&samples[7].path, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(&samples[11].path, b"").unwrap();
    samples[13].path = dir.join("images/gone.jpg");
    let bad: HashSet<usize> = [2, 7, 11, 13].into();
    let src = Arc::new(FileSource::new(samples.clone()));

    for (cache, drop_last) in [(false, false), (true, false), (false, true)] {
        let loader = Loader::new(
            src.clone(),
            LoaderConfig {
                cache,
                drop_last,
                ..config(4, 32)
            },
        )
        .unwrap();
        for epoch in 0..2 {
            let mut it = loader.epoch(epoch);
            let mut seen = Vec::new();
            let mut reported = Vec::new();
            let mut sizes = Vec::new();
            for b in it.by_ref() {
                sizes.push(b.len());
                seen.extend(b.indices.iter().copied());
                reported.extend(b.skipped.iter().map(|s| s.index));
            }
            let summary = it.summary().cloned().unwrap();
            // 13 good images: batches of 4 filled past the bad ones, then the rest.
            if drop_last {
                assert_eq!(sizes, vec![4, 4, 4]);
                assert_eq!(summary.dropped, 1);
            } else {
                assert_eq!(sizes, vec![4, 4, 4, 1]);
                assert_eq!(summary.dropped, 0);
            }
            assert_eq!(summary.samples, sizes.iter().sum::<usize>());
            assert_eq!(summary.batches, sizes.len());
            let skipped: HashSet<usize> = summary.skipped.iter().map(|s| s.index).collect();
            assert_eq!(skipped, bad, "cache {cache}");
            assert_eq!(summary.skipped.len(), 4);
            assert_eq!(reported.iter().copied().collect::<HashSet<_>>(), bad);
            for s in &summary.skipped {
                assert_eq!(s.name, samples[s.index].path.display().to_string());
                assert!(!s.message.is_empty());
            }
            let good: HashSet<usize> = seen.iter().copied().collect();
            assert_eq!(good.len(), seen.len());
            assert!(good.is_disjoint(&bad));
            assert_eq!(good.len() + summary.dropped, 13);
            // The order is the epoch's order without the bad samples.
            let expect: Vec<usize> = loader
                .order(epoch)
                .into_iter()
                .filter(|i| !bad.contains(i))
                .take(seen.len())
                .collect();
            assert_eq!(seen, expect);
        }
    }
    // load_batch reports the first failure instead of skipping.
    let loader = Loader::new(src, config(4, 32)).unwrap();
    match loader.load_batch(&[0, 2], 0) {
        Err(Error::Data { path, .. }) => assert_eq!(path, samples[2].path.display().to_string()),
        other => panic!("{:?}", other.map(|b| b.indices)),
    }
}

#[test]
fn prefetch_runs_ahead_of_a_slow_consumer_and_is_bounded() {
    let src = Arc::new(Counting {
        inner: synthetic(48, 64),
        loads: AtomicUsize::new(0),
        delay: Duration::from_millis(2),
    });
    let loader = Loader::new(
        src.clone(),
        LoaderConfig {
            prefetch: 2,
            ..config(4, 32)
        },
    )
    .unwrap();
    let mut epoch = loader.epoch(0);
    let first = epoch.next().unwrap();
    assert_eq!(first.len(), 4);
    // The consumer "trains" slowly; meanwhile the producer fills the channel (2 batches) and
    // builds one more, then waits. Polled, not timed: a loaded machine only makes it slower.
    let ahead = 4 * (1 + 2 + 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while src.loads.load(Ordering::SeqCst) < ahead && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        src.loads.load(Ordering::SeqCst),
        ahead,
        "loads after the first batch"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        src.loads.load(Ordering::SeqCst),
        ahead,
        "the prefetch is bounded"
    );
    epoch.next().unwrap();
    epoch.next().unwrap();
    let summary = epoch.finish();
    assert_eq!(summary.batches, 12);
    assert_eq!(summary.samples, 48);
    assert_eq!(src.loads.load(Ordering::SeqCst), 48);

    // Dropping an epoch half-way stops its thread without hanging.
    let mut e = loader.epoch(1);
    e.next().unwrap();
    drop(e);
}

#[test]
fn cache_decodes_once() {
    let src = Arc::new(Counting {
        inner: synthetic(10, 64),
        loads: AtomicUsize::new(0),
        delay: Duration::ZERO,
    });
    let cached = Loader::new(
        src.clone(),
        LoaderConfig {
            cache: true,
            ..config(4, 32)
        },
    )
    .unwrap();
    assert_eq!(src.loads.load(Ordering::SeqCst), 10);
    let plain = Loader::new(src.inner.clone(), config(4, 32)).unwrap();
    for epoch in 0..3 {
        let a: Vec<_> = cached.epoch(epoch).collect();
        let b: Vec<_> = plain.epoch(epoch).collect();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert_eq!(x.images, y.images);
        }
    }
    assert_eq!(src.loads.load(Ordering::SeqCst), 10);
}

#[test]
fn bad_settings_are_errors() {
    let src = synthetic(4, 64);
    assert!(Loader::new(src.clone(), config(0, 32)).is_err());
    assert!(Loader::new(
        src,
        LoaderConfig::new(
            2,
            Transform::Test {
                resize: 10,
                size: 32
            }
        )
    )
    .is_err());
}
