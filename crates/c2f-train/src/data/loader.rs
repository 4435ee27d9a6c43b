//! The batch loader: decodes and transforms a batch's images in parallel (rayon) on a background
//! thread that runs ahead of the training step, handing finished batches over a bounded channel.
//!
//! - Order: a Fisher–Yates shuffle per epoch from `(seed, epoch)` (or the identity without
//!   `shuffle`); every sample appears exactly once per epoch.
//! - Augmentation: each sample's transform draws from its own generator, seeded from
//!   `(seed, epoch, index)`, so batches do not depend on thread timing.
//! - Bad images: a sample whose image fails to load is reported in [`Batch::skipped`] with its
//!   path and the reason, and the batch is filled from the next samples of the order; the
//!   [`EpochSummary`] counts every skipped file. The loader never stops on one file.
//! - RAM cache: [`CachedSource`] (or [`LoaderConfig::cache`]) decodes a small dataset once and
//!   keeps the RGB images; augmentation still runs every epoch.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use c2f_kernels::rng::{splitmix64_output, SplitMix64};
use c2f_kernels::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;

use super::{image_io, BBox, Sample, Transform};

/// A decoded image with its annotations.
#[derive(Debug, Clone)]
pub struct Item {
    pub image: Arc<RgbImage>,
    /// 0-based class.
    pub label: usize,
    pub bbox: Option<BBox>,
}

/// A dataset the loader can draw from. `label` and `name` must be cheap (no decoding).
pub trait ImageSource: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The class of sample `index`, without loading it.
    fn label(&self, index: usize) -> usize;
    /// A multi-label source's binary attributes of sample `index` (the same number for every
    /// sample), without loading it; empty for a single-label source.
    fn attributes(&self, _index: usize) -> &[bool] {
        &[]
    }
    /// What reports call sample `index`: its path for files.
    fn name(&self, index: usize) -> String;
    /// Decodes sample `index`.
    fn load(&self, index: usize) -> Result<Item>;
}

/// Image files on disk (e.g. [`super::Dataset::train`]). Boxes are taken to be in the stored
/// pixels and are turned with the image's EXIF orientation; [`Sample::crop_bottom`] rows are cut
/// off the stored image's bottom first (the box is clipped to what is left, `None` if nothing).
/// An image above the pixel cap is refused from its header ([`image_io::decode_oriented`]).
#[derive(Debug, Clone)]
pub struct FileSource {
    samples: Vec<Sample>,
    /// One per sample for a multi-label set (CelebA), else empty.
    attributes: Vec<Vec<bool>>,
    max_pixels: u64,
}

impl FileSource {
    /// Capped at [`image_io::DEFAULT_MAX_PIXELS`].
    pub fn new(samples: Vec<Sample>) -> Self {
        FileSource {
            samples,
            attributes: Vec::new(),
            max_pixels: image_io::DEFAULT_MAX_PIXELS,
        }
    }

    /// Refuses images of more than `max_pixels` pixels (`--max-image-pixels`).
    pub fn with_max_pixels(self, max_pixels: u64) -> Self {
        FileSource { max_pixels, ..self }
    }

    /// A multi-label source: `attributes[i]` belongs to `samples[i]`.
    pub fn with_attributes(samples: Vec<Sample>, attributes: Vec<Vec<bool>>) -> Result<Self> {
        if samples.len() != attributes.len() {
            return Err(Error::Shape(format!(
                "{} samples but {} attribute rows",
                samples.len(),
                attributes.len()
            )));
        }
        Ok(FileSource {
            attributes,
            ..FileSource::new(samples)
        })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }
}

impl ImageSource for FileSource {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn label(&self, index: usize) -> usize {
        self.samples[index].label
    }

    fn attributes(&self, index: usize) -> &[bool] {
        self.attributes.get(index).map_or(&[], Vec::as_slice)
    }

    fn name(&self, index: usize) -> String {
        self.samples[index].path.display().to_string()
    }

    fn load(&self, index: usize) -> Result<Item> {
        let s = &self.samples[index];
        let d = image_io::load_oriented(&s.path, self.max_pixels)?;
        // Boxes are annotated on the stored pixels: turn them with the image.
        let turn = |b| image_io::orient_box(b, d.orientation, d.stored_size);
        let bbox = s.bbox.map(turn);
        if s.crop_bottom == 0 {
            return Ok(Item {
                image: Arc::new(d.image),
                label: s.label,
                bbox,
            });
        }
        // The rows to cut are the stored image's bottom ones: turn the kept part with the image
        // too, so an EXIF-rotated file loses the right side.
        let (w, h) = d.stored_size;
        if s.crop_bottom >= h {
            return Err(Error::Data {
                path: s.path.display().to_string(),
                line: None,
                message: format!(
                    "image is {h} pixels high, nothing is left after cutting {} rows off",
                    s.crop_bottom
                ),
            });
        }
        let keep = turn(BBox::new(0.0, 0.0, w as f32, (h - s.crop_bottom) as f32));
        let (kx, ky, kw, kh) = (keep.x as u32, keep.y as u32, keep.w as u32, keep.h as u32);
        let image = image::imageops::crop_imm(&d.image, kx, ky, kw, kh).to_image();
        let bbox = bbox.and_then(|b| {
            let x0 = b.x.max(keep.x);
            let y0 = b.y.max(keep.y);
            let x1 = b.right().min(keep.right());
            let y1 = b.bottom().min(keep.bottom());
            (x1 > x0 && y1 > y0).then(|| BBox::new(x0 - keep.x, y0 - keep.y, x1 - x0, y1 - y0))
        });
        Ok(Item {
            image: Arc::new(image),
            label: s.label,
            bbox,
        })
    }
}

/// Another source decoded once, in parallel, and kept in RAM. Images that failed to decode keep
/// their error and fail again (and are counted again) every epoch.
pub struct CachedSource {
    names: Vec<String>,
    labels: Vec<usize>,
    attributes: Vec<Vec<bool>>,
    items: Vec<std::result::Result<Item, String>>,
}

impl CachedSource {
    pub fn new(inner: &dyn ImageSource) -> Self {
        let items = (0..inner.len())
            .into_par_iter()
            .map(|i| inner.load(i).map_err(reason))
            .collect();
        CachedSource {
            names: (0..inner.len()).map(|i| inner.name(i)).collect(),
            labels: (0..inner.len()).map(|i| inner.label(i)).collect(),
            attributes: (0..inner.len())
                .map(|i| inner.attributes(i).to_vec())
                .collect(),
            items,
        }
    }

    /// How many images failed to decode.
    pub fn failures(&self) -> usize {
        self.items.iter().filter(|r| r.is_err()).count()
    }

    /// Bytes of decoded pixels held.
    pub fn bytes(&self) -> usize {
        self.items
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|it| it.image.as_raw().len())
            .sum()
    }
}

impl ImageSource for CachedSource {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn attributes(&self, index: usize) -> &[bool] {
        &self.attributes[index]
    }

    fn name(&self, index: usize) -> String {
        self.names[index].clone()
    }

    fn load(&self, index: usize) -> Result<Item> {
        self.items[index].clone().map_err(|message| Error::Data {
            path: self.names[index].clone(),
            line: None,
            message,
        })
    }
}

/// Why a sample's image could not be loaded, without its path (which the reports name
/// separately).
fn reason(e: Error) -> String {
    match e {
        Error::Data {
            line: None,
            message,
            ..
        }
        | Error::File { message, .. } => message,
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// The loader's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub transform: Transform,
    /// Seeds the shuffles and the augmentations.
    pub seed: u64,
    pub shuffle: bool,
    /// Drop the last, short batch of an epoch.
    pub drop_last: bool,
    /// Finished batches that may wait in the channel (the producer builds one more meanwhile).
    pub prefetch: usize,
    /// Decode the whole source once at [`Loader::new`] and keep it in RAM.
    pub cache: bool,
    /// Decoding threads: 0 uses rayon's global pool, otherwise a pool of its own.
    pub threads: usize,
}

impl LoaderConfig {
    /// Shuffled, last batch kept, two batches prefetched, no cache, the global rayon pool.
    pub fn new(batch_size: usize, transform: Transform) -> Self {
        LoaderConfig {
            batch_size,
            transform,
            seed: 0,
            shuffle: true,
            drop_last: false,
            prefetch: 2,
            cache: false,
            threads: 0,
        }
    }
}

/// A sample that was skipped because its image could not be loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Index in the source.
    pub index: usize,
    /// The source's name for it (the file path).
    pub name: String,
    /// Why (the error, without the path).
    pub message: String,
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, S, S]`, normalised.
    pub images: Vec<f32>,
    pub labels: Vec<i32>,
    /// Each sample's attributes (empty vectors for a single-label source).
    pub attributes: Vec<Vec<bool>>,
    /// Each image's box in output pixels (see [`Transform::apply_into`]).
    pub boxes: Vec<Option<BBox>>,
    /// The source index of each image.
    pub indices: Vec<usize>,
    /// `S`.
    pub size: usize,
    /// Samples skipped while this batch was filled.
    pub skipped: Vec<Skipped>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What an epoch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpochSummary {
    pub epoch: u64,
    pub batches: usize,
    /// Images delivered.
    pub samples: usize,
    /// Samples left out by `drop_last`.
    pub dropped: usize,
    /// Every sample skipped because its image failed to load.
    pub skipped: Vec<Skipped>,
}

/// The loader over a source (a clone shares the source, its cache and the thread pool).
#[derive(Clone)]
pub struct Loader {
    source: Arc<dyn ImageSource>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// The order of an epoch: a Fisher–Yates shuffle of `0..len` from `(seed, epoch)`.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = SplitMix64(splitmix64_output(seed ^ 0x5348_5546_464c_4521, epoch + 1));
        for i in (1..len).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// The generator sample `index`'s augmentation uses in `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> SplitMix64 {
    let e = splitmix64_output(seed ^ 0x5452_414e_5346_4f52, epoch + 1);
    SplitMix64(splitmix64_output(e, index as u64 + 1))
}

impl Loader {
    pub fn new(source: Arc<dyn ImageSource>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(Error::config(
                "batch_size",
                0,
                "the loader needs at least one image a batch",
            ));
        }
        config.transform.validate()?;
        let pool = if config.threads > 0 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(config.threads)
                .thread_name(|i| format!("c2f-loader-{i}"))
                .build()
                .map_err(|e| {
                    Error::config(
                        "threads",
                        config.threads,
                        format!("cannot start the loader's threads: {e}"),
                    )
                })?;
            Some(Arc::new(pool))
        } else {
            None
        };
        let source: Arc<dyn ImageSource> = if config.cache {
            let inner = source;
            let cached = match &pool {
                Some(p) => p.install(|| CachedSource::new(&*inner)),
                None => CachedSource::new(&*inner),
            };
            Arc::new(cached)
        } else {
            source
        };
        Ok(Loader {
            source,
            config,
            pool,
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn source(&self) -> &Arc<dyn ImageSource> {
        &self.source
    }

    /// Samples in the source.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Batches an epoch yields when no image fails.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order `epoch` visits the samples in.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.len(), self.config.seed, epoch, self.config.shuffle)
    }

    /// Starts `epoch`: a background thread begins filling batches at once.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        self.epoch_from(epoch, 0)
    }

    /// Starts `epoch` at batch `first_batch` (the batches before it are not loaded): how a run
    /// resumed from a mid-epoch checkpoint sees exactly the rest of that epoch. Counting batches
    /// by position assumes the skipped part had no unreadable files, which holds for a dataset
    /// that has not changed since the checkpoint (the trainer checks its fingerprint).
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> Epoch {
        let (tx, rx) = sync_channel(self.config.prefetch);
        let mut order = self.order(epoch);
        order.drain(..(first_batch * self.config.batch_size).min(order.len()));
        let producer = Producer {
            source: self.source.clone(),
            config: self.config.clone(),
            pool: self.pool.clone(),
            epoch,
            order,
        };
        let handle = std::thread::Builder::new()
            .name(format!("c2f-prefetch-{epoch}"))
            .spawn(move || producer.run(|m| tx.send(m).is_ok()))
            .expect("spawn the prefetch thread");
        Epoch {
            rx: Some(rx),
            handle: Some(handle),
            summary: None,
        }
    }

    /// Loads `batches` of `epoch` in order, each as [`Loader::load_batch`] does (no skipping:
    /// an unreadable image is that batch's error), on a background thread that keeps up to
    /// `prefetch` of them ready. How a data-parallel rank reads its slices of the global
    /// batches (`c2f_dist::shard::ShardPlan`): a skipped image would shift the other ranks'
    /// slices.
    pub fn load_batches(&self, epoch: u64, batches: Vec<Vec<usize>>) -> Prefetched {
        let (tx, rx) = sync_channel(self.config.prefetch);
        let loader = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("c2f-prefetch-{epoch}"))
            .spawn(move || {
                for indices in batches {
                    if tx.send(loader.load_batch(&indices, epoch)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the prefetch thread");
        Prefetched {
            rx: Some(rx),
            handle: Some(handle),
        }
    }

    /// Loads the given samples as one batch, on the calling thread (no skipping: the first
    /// failure is the error). For evaluation of chosen images.
    pub fn load_batch(&self, indices: &[usize], epoch: u64) -> Result<Batch> {
        let producer = Producer {
            source: self.source.clone(),
            config: self.config.clone(),
            pool: self.pool.clone(),
            epoch,
            order: Vec::new(),
        };
        let s = self.config.transform.size() as usize;
        let mut images = vec![0.0; indices.len() * 3 * s * s];
        let results = producer.fill(indices, &mut images);
        let mut batch = Batch {
            images,
            labels: Vec::new(),
            attributes: indices
                .iter()
                .map(|&i| self.source.attributes(i).to_vec())
                .collect(),
            boxes: Vec::new(),
            indices: indices.to_vec(),
            size: s,
            skipped: Vec::new(),
        };
        for r in results {
            let (label, bbox) = r?;
            batch.labels.push(label);
            batch.boxes.push(bbox);
        }
        Ok(batch)
    }
}

enum Msg {
    Batch(Batch),
    Done(EpochSummary),
}

struct Producer {
    source: Arc<dyn ImageSource>,
    config: LoaderConfig,
    pool: Option<Arc<rayon::ThreadPool>>,
    epoch: u64,
    order: Vec<usize>,
}

impl Producer {
    /// Loads and transforms `indices` in parallel into consecutive slots of `out`.
    fn fill(&self, indices: &[usize], out: &mut [f32]) -> Vec<Result<(i32, Option<BBox>)>> {
        let t = self.config.transform;
        let chw = t.output_len();
        let mut work = || -> Vec<Result<(i32, Option<BBox>)>> {
            indices
                .par_iter()
                .zip(out.par_chunks_mut(chw))
                .map(|(&i, slot)| {
                    let item = self.source.load(i)?;
                    let label = i32::try_from(item.label).map_err(|_| Error::Data {
                        path: self.source.name(i),
                        line: None,
                        message: format!("label {} too large", item.label),
                    })?;
                    let mut rng = sample_rng(self.config.seed, self.epoch, i);
                    let (bbox, _) = t.apply_into(&item.image, item.bbox, &mut rng, slot)?;
                    Ok((label, bbox))
                })
                .collect()
        };
        match &self.pool {
            Some(p) => p.install(work),
            None => work(),
        }
    }

    /// Fills and sends the epoch's batches; `send` returns false once the consumer is gone.
    fn run(self, send: impl Fn(Msg) -> bool) {
        let b = self.config.batch_size;
        let s = self.config.transform.size() as usize;
        let chw = 3 * s * s;
        let mut summary = EpochSummary {
            epoch: self.epoch,
            ..EpochSummary::default()
        };
        let mut cursor = 0;
        while cursor < self.order.len() {
            let mut images = vec![0.0f32; b * chw];
            let mut labels = Vec::with_capacity(b);
            let mut boxes = Vec::with_capacity(b);
            let mut indices = Vec::with_capacity(b);
            let mut skipped = Vec::new();
            while labels.len() < b && cursor < self.order.len() {
                let got = labels.len();
                let take = &self.order[cursor..(cursor + b - got).min(self.order.len())];
                cursor += take.len();
                let results = self.fill(take, &mut images[got * chw..(got + take.len()) * chw]);
                for (k, (&i, r)) in take.iter().zip(results).enumerate() {
                    match r {
                        Ok((label, bbox)) => {
                            // Close the gap left by earlier failures of this chunk.
                            let (from, to) = (got + k, labels.len());
                            if from != to {
                                images.copy_within(from * chw..(from + 1) * chw, to * chw);
                            }
                            labels.push(label);
                            boxes.push(bbox);
                            indices.push(i);
                        }
                        Err(e) => skipped.push(Skipped {
                            index: i,
                            name: self.source.name(i),
                            message: reason(e),
                        }),
                    }
                }
            }
            summary.skipped.extend(skipped.iter().cloned());
            if labels.is_empty() || (labels.len() < b && self.config.drop_last) {
                summary.dropped += labels.len();
                break;
            }
            images.truncate(labels.len() * chw);
            summary.batches += 1;
            summary.samples += labels.len();
            let attributes = indices
                .iter()
                .map(|&i| self.source.attributes(i).to_vec())
                .collect();
            let batch = Batch {
                images,
                labels,
                attributes,
                boxes,
                indices,
                size: s,
                skipped,
            };
            if !send(Msg::Batch(batch)) {
                return;
            }
        }
        send(Msg::Done(summary));
    }
}

/// Batches being loaded by [`Loader::load_batches`]; dropping it stops the background thread.
pub struct Prefetched {
    rx: Option<Receiver<Result<Batch>>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Prefetched {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match self.rx.as_ref()?.recv() {
            Ok(batch) => Some(batch),
            Err(_) => {
                // All sent, or the thread died (a panic in a source): surface a panic.
                self.rx = None;
                if let Some(Err(panic)) = self.handle.take().map(JoinHandle::join) {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        self.rx = None; // a blocked send fails now, and the thread returns
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An epoch in progress: iterate it for the batches; [`Epoch::summary`] is there once the last
/// batch has been taken, and [`Epoch::finish`] drains the rest and returns it. Dropping it stops
/// the background thread.
pub struct Epoch {
    rx: Option<Receiver<Msg>>,
    handle: Option<JoinHandle<()>>,
    summary: Option<EpochSummary>,
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(Msg::Batch(b)) => Some(b),
            Ok(Msg::Done(s)) => {
                self.summary = Some(s);
                self.stop();
                None
            }
            Err(_) => {
                // The producer died (a panic in a source): surface it.
                self.rx = None;
                if let Some(h) = self.handle.take() {
                    if let Err(p) = h.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                None
            }
        }
    }
}

impl Epoch {
    /// The summary, once the epoch's last batch has been taken.
    pub fn summary(&self) -> Option<&EpochSummary> {
        self.summary.as_ref()
    }

    /// Takes the remaining batches (discarding them) and returns the summary.
    pub fn finish(mut self) -> EpochSummary {
        for _ in self.by_ref() {}
        self.summary.take().unwrap_or_default()
    }

    fn stop(&mut self) {
        self.rx = None; // a blocked send fails now, and the producer returns
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop();
    }
}
