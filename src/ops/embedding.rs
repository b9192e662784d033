//! Token + positional embedding (CLIP's text encoder input): out[b, t] = table[ids[b, t]] + pos[t].

use cudarc::driver::LaunchConfig;

use crate::device::cuda::check::{launch_and_compare, max_rel_err_all, poisoned, random_vec, GpuCheck, Work};
use crate::device::cuda::{to_i32, CudaTensor, DType, Gpu};
use crate::error::{Error, Result};

/// CPU reference. ids (B, T) with every id < V; table (V, C); pos (>= T, C); out (B, T, C).
pub fn token_embedding_cpu(ids: &[i32], t: usize, table: &[f32], pos: &[f32], c: usize, out: &mut [f32]) -> Result<()> {
    let v = table.len() / c.max(1);
    for (i, &id) in ids.iter().enumerate() {
        if id < 0 || id as usize >= v {
            return Err(Error::Tokenizer(format!("token id {id} outside the vocabulary of {v}")));
        }
        let (row, p) = (&table[id as usize * c..][..c], &pos[(i % t) * c..][..c]);
        for ((o, a), b) in out[i * c..(i + 1) * c].iter_mut().zip(row).zip(p) {
            *o = a + b;
        }
    }
    Ok(())
}

/// CUDA launcher: kernels/embedding.cu. `ids_host` are the same ids as `ids` (B, T) i32 on the
/// device; they are range-checked here, since a bad id would read outside the table.
pub fn token_embedding_cuda(
    gpu: &Gpu,
    ids: &CudaTensor,
    ids_host: &[i32],
    table: &CudaTensor,
    pos: &CudaTensor,
    out: &mut CudaTensor,
) -> Result<()> {
    let (b, t) = match ids.shape() {
        [b, t] => (*b, *t),
        s => return Err(Error::Shape(format!("token_embedding_cuda: ids must be (B, T); got {s:?}"))),
    };
    let (v, c) = (table.dim(0), table.dim(1));
    if ids_host.len() != b * t || pos.dim(1) != c || pos.dim(0) < t || out.shape() != [b, t, c] {
        return Err(Error::Shape(format!(
            "token_embedding_cuda: ids {:?}, table {:?}, pos {:?}, out {:?}",
            ids.shape(),
            table.shape(),
            pos.shape(),
            out.shape()
        )));
    }
    if let Some(bad) = ids_host.iter().find(|&&id| id < 0 || id as usize >= v) {
        return Err(Error::Tokenizer(format!("token id {bad} outside the vocabulary of {v}")));
    }
    ids.expect_dtype(DType::I32, "token ids")?;
    pos.expect_dtype(table.dtype(), "positional table")?;
    out.expect_dtype(table.dtype(), "embedding output")?;
    let threads = (32 * c.div_ceil(32)).min(256) as u32;
    let cfg = LaunchConfig { grid_dim: ((b * t) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let name = format!("token_embedding_forward_{}", table.dtype().suffix());
    gpu.launch(
        "embedding",
        &name,
        cfg,
        &[ids.arg(gpu), table.arg(gpu), pos.arg(gpu), out.arg(gpu), to_i32(t, "T")?, to_i32(c, "C")?],
    )
}

pub fn gpu_checks() -> Vec<GpuCheck> {
    use rand::Rng;
    let mut checks = Vec::new();
    for &(b, t, c, v) in &[(80usize, 77usize, 512usize, 49408usize), (3, 5, 33, 17)] {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let bytes = (b * t * c * 3 * dtype.size_in_bytes()) as f64;
            checks.push(GpuCheck::new(
                "token_embedding_forward",
                format!("B={b} T={t} C={c} V={v}"),
                dtype,
                Work::Bytes(bytes),
                move |gpu, rng| {
                    let ids: Vec<i32> = (0..b * t).map(|_| rng.gen_range(0..v as i32)).collect();
                    let table = random_vec(rng, v * c, 1.0);
                    let pos = random_vec(rng, t * c, 0.1);
                    let mut want = vec![0.0; b * t * c];
                    token_embedding_cpu(&ids, t, &table, &pos, c, &mut want)?;
                    let idd = CudaTensor::from_i32(gpu, &[b, t], &ids)?;
                    let td = CudaTensor::from_f32(gpu, &[v, c], &table, dtype)?;
                    let pd = CudaTensor::from_f32(gpu, &[t, c], &pos, dtype)?;
                    launch_and_compare(
                        gpu,
                        poisoned(gpu, &[b, t, c], dtype)?,
                        move |g, out| token_embedding_cuda(g, &idd, &ids, &td, &pd, out),
                        |g, out| max_rel_err_all(g, &[(out, &want)]),
                    )
                },
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_adds_the_row_and_the_position() {
        let table = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0]; // V = 3, C = 2
        let pos = [0.5, 0.25, -1.0, -2.0]; // T = 2
        let mut out = [0.0; 8];
        token_embedding_cpu(&[2, 0, 1, 1], 2, &table, &pos, 2, &mut out).unwrap();
        assert_eq!(out, [100.5, 200.25, 0.0, 0.0, 10.5, 20.25, 9.0, 18.0]);
        assert!(token_embedding_cpu(&[3], 1, &table, &pos, 2, &mut out).is_err());
    }
}
