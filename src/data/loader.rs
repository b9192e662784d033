//! The parallel image loader: a background thread decodes and transforms the next batches
//! with rayon while the caller runs the model on the current one (a bounded channel holds the
//! prefetched batches), and the batch buffers go back to the loader to be filled again.
//!
//! A file that cannot be read, decoded or transformed is reported in the batch's `failed`
//! list with its reason and never stops the loading.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::data::decode::decode_image_file;
use crate::data::transforms::Transform;
use crate::error::{Error, Result};

/// An input that was skipped, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// Images of one batch that share a transformed size, ready for the model.
#[derive(Debug)]
pub struct Group {
    pub height: usize,
    pub width: usize,
    /// Index (into the loader's inputs) of each image, in input order.
    pub indices: Vec<usize>,
    /// (indices.len(), 3, height, width) CHW pixels. Hand the buffer back with
    /// [`Loader::recycle`] when done with it.
    pub pixels: Vec<f32>,
}

/// One batch: `len` consecutive inputs, the decoded ones grouped by size.
#[derive(Debug)]
pub struct Batch {
    /// Index of the batch's first input.
    pub start: usize,
    /// How many inputs the batch covers (decoded and failed).
    pub len: usize,
    pub groups: Vec<Group>,
    /// (input index, reason) of the inputs that could not be loaded.
    pub failed: Vec<(usize, String)>,
}

/// What the loader did, for the run report.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct LoaderStats {
    pub decoded: usize,
    pub failed: usize,
    /// Wall time the loader spent decoding and transforming (it overlaps the model's time).
    pub busy_seconds: f64,
}

impl LoaderStats {
    /// Images decoded and transformed per second of loader time.
    pub fn images_per_s(&self) -> f64 {
        if self.busy_seconds > 0.0 {
            self.decoded as f64 / self.busy_seconds
        } else {
            0.0
        }
    }
}

/// Decodes and transforms one image; every failure becomes a reason string.
pub fn load_one(path: &Path, transform: &Transform) -> std::result::Result<(Vec<f32>, usize, usize), String> {
    let img = decode_image_file(path).map_err(reason_of)?;
    Ok(transform.apply(&img))
}

fn reason_of(e: Error) -> String {
    match e {
        Error::Image { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The background loader; [`Loader::next_batch`] hands out the batches in input order.
pub struct Loader {
    rx: Receiver<Batch>,
    recycle: Sender<Vec<f32>>,
    handle: Option<JoinHandle<LoaderStats>>,
}

impl Loader {
    /// Starts loading `paths`, `batch` at a time, keeping up to `prefetch` batches ready.
    pub fn spawn(paths: Vec<PathBuf>, transform: Transform, batch: usize, prefetch: usize) -> Loader {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let (recycle, pool) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("labelfree-loader".into())
            .spawn(move || produce(&paths, &transform, batch.max(1), &tx, &pool))
            .ok();
        Loader { rx, recycle, handle }
    }

    /// The next batch, in input order; `None` when all are delivered (or the loader died: see
    /// [`Loader::finish`]).
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }

    /// Gives a batch buffer back for reuse.
    pub fn recycle(&self, buf: Vec<f32>) {
        let _ = self.recycle.send(buf);
    }

    /// Waits for the loader thread; an error if it died (a bug: nothing it reads should).
    /// Stops the loader (if batches are left, they are not loaded) and waits for its thread;
    /// an error if the thread died (a bug: no input should make it) or never started.
    pub fn finish(self) -> Result<LoaderStats> {
        let Loader { rx, recycle, handle } = self;
        drop(rx);
        drop(recycle);
        match handle {
            Some(h) => h.join().map_err(|_| Error::Internal("the image loader thread panicked".into())),
            None => Err(Error::Internal("the image loader thread could not be started".into())),
        }
    }
}

/// A buffer of exactly `len` values, reusing a recycled allocation when one is there.
fn take_buffer(pool: &Receiver<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut buf = pool.try_recv().unwrap_or_default();
    buf.clear();
    buf.resize(len, 0.0);
    buf
}

fn produce(
    paths: &[PathBuf],
    transform: &Transform,
    batch: usize,
    tx: &SyncSender<Batch>,
    pool: &Receiver<Vec<f32>>,
) -> LoaderStats {
    let mut stats = LoaderStats::default();
    for (b, chunk) in paths.chunks(batch).enumerate() {
        let t0 = Instant::now();
        let start = b * batch;
        let out = match transform.fixed_output_hw() {
            Some(hw) => load_fixed(chunk, start, transform, hw, pool),
            None => load_any(chunk, start, transform, pool),
        };
        stats.busy_seconds += t0.elapsed().as_secs_f64();
        stats.failed += out.failed.len();
        stats.decoded += out.len - out.failed.len();
        if tx.send(out).is_err() {
            break; // the consumer stopped
        }
    }
    stats
}

/// Every image has the same output size: decode straight into its slot of one buffer, then
/// close the gaps the failures left.
fn load_fixed(
    chunk: &[PathBuf],
    start: usize,
    transform: &Transform,
    (h, w): (usize, usize),
    pool: &Receiver<Vec<f32>>,
) -> Batch {
    let per = 3 * h * w;
    let mut pixels = take_buffer(pool, chunk.len() * per);
    let results: Vec<std::result::Result<(), String>> = pixels
        .par_chunks_mut(per)
        .zip(chunk.par_iter())
        .map(|(slot, p)| {
            let img = decode_image_file(p).map_err(reason_of)?;
            transform.apply_into(&img, slot);
            Ok(())
        })
        .collect();
    let (mut indices, mut failed) = (Vec::new(), Vec::new());
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(()) => {
                let k = indices.len();
                if k != i {
                    pixels.copy_within(i * per..(i + 1) * per, k * per);
                }
                indices.push(start + i);
            }
            Err(reason) => failed.push((start + i, reason)),
        }
    }
    pixels.truncate(indices.len() * per);
    let groups = if indices.is_empty() { Vec::new() } else { vec![Group { height: h, width: w, indices, pixels }] };
    Batch { start, len: chunk.len(), groups, failed }
}

/// Output sizes depend on the input: decode each image on its own, then group equal sizes.
fn load_any(chunk: &[PathBuf], start: usize, transform: &Transform, pool: &Receiver<Vec<f32>>) -> Batch {
    let loaded: Vec<_> = chunk.par_iter().map(|p| load_one(p, transform)).collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut failed = Vec::new();
    for (i, r) in loaded.into_iter().enumerate() {
        match r {
            Ok((data, h, w)) => {
                let g = match groups.iter().position(|g| (g.height, g.width) == (h, w)) {
                    Some(g) => g,
                    None => {
                        let mut pixels = take_buffer(pool, 0);
                        pixels.reserve(data.len());
                        groups.push(Group { height: h, width: w, indices: Vec::new(), pixels });
                        groups.len() - 1
                    }
                };
                groups[g].indices.push(start + i);
                groups[g].pixels.extend_from_slice(&data);
            }
            Err(reason) => failed.push((start + i, reason)),
        }
    }
    Batch { start, len: chunk.len(), groups, failed }
}
