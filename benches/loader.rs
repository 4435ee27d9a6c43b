//! The input pipeline, images per second (issue 20): CUB-like JPEGs (500×375, about CUB's bytes
//! per pixel) read from files, decoded and put through the training transform
//! (`RandomResizedCrop` + flip + ImageNet normalisation) at 299² and 448², by the loader itself
//! (`Loader::load_batch` for criterion, whole prefetched epochs for the `LOADBENCH` lines), on one
//! core (a 1-thread pool) and on all cores (rayon's global pool, as the trainer runs it).
//!
//! Target: the loader delivers at least 1.5× the bf16 Coarse2Fine step rate of the GPU machine
//! (16 cores). That rate is not measured yet, and no PyTorch Coarse2Fine peer either, so the
//! stand-in is 1.5× PyTorch's bf16 AMP InceptionV3 step (up to Mixed_6e, batch 64) on an H200
//! (docs/perf.md): 1,634 img/s at 299², 1,151 at 448². A Coarse2Fine step runs two backbone
//! passes, so this overstates what it needs. `LOADBENCH` lines give the rate, the machine, and
//! the fraction of the target reached (one core's rate times 16 for the 1-core rows: 16 cores
//! scaling perfectly); `LOADPROFILE` lines split one core's time per image into file read,
//! decode, crop + resize and normalisation, so the limit is attributed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use c2f_kernels::rng::SplitMix64;
use c2f_train::data::image_io::{decode_oriented, DEFAULT_MAX_PIXELS};
use c2f_train::data::loader::{sample_rng, FileSource};
use c2f_train::data::transform::normalize_into;
use c2f_train::data::{Loader, LoaderConfig, Sample, Transform};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rayon::prelude::*;

/// CUB-200-2011's typical image: 500 wide, 375 high.
const WIDTH: u32 = 500;
const HEIGHT: u32 = 375;
/// The cores of the GPU machine the target is for.
const TARGET_CORES: f64 = 16.0;
/// (output side, 1.5× PyTorch's bf16 AMP InceptionV3 img/s on an H200 at that side).
const SIZES: [(u32, f64); 2] = [(299, 1.5 * 1634.0), (448, 1.5 * 1151.0)];

/// Criterion's test mode (`cargo test --benches`, no `--bench` flag) runs each bench once: a few
/// images are enough there.
fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A photo-like image: a lit background gradient, a few soft elliptical blobs (the bird), and
/// per-pixel noise for texture. The noise's amplitude sets the JPEG's bytes per pixel, and with
/// them the entropy decoding's cost: at quality 90 it gives about 4 bits per pixel, near CUB's
/// (its 1.1 GB archive over 11,788 images of about 500×375, roughly 95 KB a file).
fn cub_like_jpeg(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let base: [f64; 3] = std::array::from_fn(|_| rng.uniform(40.0, 200.0));
    let tilt: [f64; 2] = [rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2)];
    let blobs: Vec<[f64; 7]> = (0..4)
        .map(|_| {
            [
                rng.uniform(0.0, WIDTH as f64),
                rng.uniform(0.0, HEIGHT as f64),
                rng.uniform(30.0, 120.0),
                rng.uniform(30.0, 120.0),
                rng.uniform(-90.0, 90.0),
                rng.uniform(-90.0, 90.0),
                rng.uniform(-90.0, 90.0),
            ]
        })
        .collect();
    let image = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let (xf, yf) = (x as f64, y as f64);
        let light = tilt[0] * xf + tilt[1] * yf;
        let weights: Vec<f64> = blobs
            .iter()
            .map(|b| {
                let (dx, dy) = ((xf - b[0]) / b[2], (yf - b[1]) / b[3]);
                (-(dx * dx + dy * dy)).exp()
            })
            .collect();
        let mut px = [0u8; 3];
        for (c, v) in px.iter_mut().enumerate() {
            let mut value = base[c] + light + rng.uniform(-14.0, 14.0);
            for (b, w) in blobs.iter().zip(&weights) {
                value += b[4 + c] * w;
            }
            *v = value.clamp(0.0, 255.0) as u8;
        }
        image::Rgb(px)
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(&image)
        .expect("encode a JPEG in memory");
    bytes
}

/// `n` CUB-like JPEG files in a fresh folder, removed on drop.
struct JpegSet {
    dir: PathBuf,
    files: Vec<Vec<u8>>,
}

impl JpegSet {
    fn new(n: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("c2f-loader-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the bench's image folder");
        let files: Vec<Vec<u8>> = (0..n as u64).into_par_iter().map(cub_like_jpeg).collect();
        for (i, bytes) in files.iter().enumerate() {
            std::fs::write(Self::path(&dir, i), bytes).expect("write a bench image");
        }
        JpegSet { dir, files }
    }

    fn path(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("{i:05}.jpg"))
    }

    fn source(&self) -> Arc<FileSource> {
        let samples = (0..self.files.len())
            .map(|i| Sample {
                id: i as u64 + 1,
                path: Self::path(&self.dir, i),
                label: i % 200,
                bbox: None,
                is_train: true,
                crop_bottom: 0,
            })
            .collect();
        Arc::new(FileSource::new(samples))
    }

    fn bits_per_pixel(&self) -> f64 {
        let bytes: usize = self.files.iter().map(Vec::len).sum();
        8.0 * bytes as f64 / (self.files.len() as f64 * (WIDTH * HEIGHT) as f64)
    }
}

impl Drop for JpegSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn loader(set: &JpegSet, size: u32, batch: usize, threads: usize) -> Loader {
    let config = LoaderConfig {
        threads,
        ..LoaderConfig::new(batch, Transform::train(size))
    };
    Loader::new(set.source(), config).expect("build the loader")
}

/// Images per second over whole epochs of the prefetching loader, the way the trainer draws them:
/// epochs until at least `min` has passed.
fn epoch_rate(loader: &Loader, min: Duration) -> f64 {
    let start = Instant::now();
    let (mut images, mut epoch) = (0, 0);
    while images == 0 || start.elapsed() < min {
        images += loader.epoch(epoch).map(|b| b.len()).sum::<usize>();
        epoch += 1;
    }
    images as f64 / start.elapsed().as_secs_f64()
}

/// Mean seconds per image of `work(i)` over the set's images, on the calling thread.
fn per_image(n: usize, mut work: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        work(i);
    }
    start.elapsed().as_secs_f64() / n as f64
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{model}, {} cores", rayon::current_num_threads())
}

fn bench(c: &mut Criterion) {
    let n = if quick() { 4 } else { 256 };
    let set = JpegSet::new(n);
    let machine = machine();
    let cores = rayon::current_num_threads();
    let min = Duration::from_millis(if quick() { 0 } else { 1500 });
    println!(
        "loader bench: {n} JPEGs of {WIDTH}×{HEIGHT}, {:.2} bits per pixel, on {machine}",
        set.bits_per_pixel()
    );
    let decode = |i: usize| decode_oriented(&set.files[i], "bench", DEFAULT_MAX_PIXELS).unwrap();

    let mut g = c.benchmark_group("loader_stage");
    g.sample_size(10).throughput(Throughput::Elements(1));
    let mut next = 0;
    g.bench_function("decode", |b| {
        b.iter(|| {
            next = (next + 1) % n;
            decode(next)
        })
    });
    let decoded: Vec<RgbImage> = (0..n).map(|i| decode(i).image).collect();
    for (size, _) in SIZES {
        let t = Transform::train(size);
        let mut out = vec![0.0; t.output_len()];
        let mut k = 0;
        g.bench_function(format!("transform_{size}"), |b| {
            b.iter(|| {
                k += 1;
                let mut rng = sample_rng(0, k as u64, k % n);
                t.apply_into(&decoded[k % n], None, &mut rng, &mut out)
                    .unwrap()
            })
        });
    }
    g.finish();

    for (size, target) in SIZES {
        for (threads, batch, what) in [(1, 16, "1core"), (0, 64, "allcores")] {
            let loader = loader(&set, size, batch.min(n), threads);
            let indices: Vec<usize> = (0..batch.min(n)).collect();
            let mut g = c.benchmark_group(format!("loader_{what}"));
            g.sample_size(10)
                .sampling_mode(criterion::SamplingMode::Flat)
                .throughput(Throughput::Elements(indices.len() as u64));
            let mut epoch = 0;
            g.bench_function(format!("train_{size}"), |b| {
                b.iter(|| {
                    epoch += 1;
                    loader.load_batch(&indices, epoch).unwrap()
                })
            });
            g.finish();
            let rate = epoch_rate(&loader, min);
            let (used, delivered) = if threads == 1 {
                (1, rate * TARGET_CORES)
            } else {
                (cores, rate * TARGET_CORES / cores as f64)
            };
            println!(
                "LOADBENCH\t{what}_train_{size}\t{rate:.0} img/s on {used} core(s)\t{:.0} per \
                 core\t16 cores: {delivered:.0}\t{:.2} of the {target:.0} target (1.5x PyTorch \
                 bf16 AMP InceptionV3, H200)\t{machine}",
                rate / used as f64,
                delivered / target
            );
        }
    }

    // One core's time per image, stage by stage (the decoded images above feed the transform).
    let read = per_image(n, |i| {
        std::hint::black_box(std::fs::read(JpegSet::path(&set.dir, i)).unwrap());
    });
    let dec = per_image(n, |i| {
        std::hint::black_box(decode(i));
    });
    for (size, _) in SIZES {
        let t = Transform::train(size);
        let mut out = vec![0.0; t.output_len()];
        let transform = per_image(n, |i| {
            t.apply_into(&decoded[i], None, &mut sample_rng(0, 0, i), &mut out)
                .unwrap();
        });
        let square = RgbImage::new(size, size);
        let normalize = per_image(n, |i| {
            normalize_into(&square, i % 2 == 0, &mut out).unwrap()
        });
        let total = read + dec + transform;
        let ms = |s: f64| format!("{:.2} ms ({:.0}%)", s * 1e3, 100.0 * s / total);
        println!(
            "LOADPROFILE\ttrain_{size}\t1 core: {:.2} ms/img\tread {}\tdecode {}\t\
             crop+resize {}\tnormalise+flip {}\t{machine}",
            total * 1e3,
            ms(read),
            ms(dec),
            ms(transform - normalize),
            ms(normalize)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
