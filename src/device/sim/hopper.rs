//! The sm_90a pieces of the simulator that are plain functions of their inputs: the wgmma
//! shared-memory matrix descriptor and the operand layouts it addresses, the accumulator
//! fragment of a warpgroup, the 128-byte swizzle, and the simulator's own encoding of a TMA
//! tensor map. The executor (exec.rs) does the scheduling (warpgroup rendezvous, mbarrier
//! waits) and calls these.
//!
//! Written from the PTX ISA (sections "Asynchronous Warpgroup Level Matrix Shared Memory
//! Layout", "Matrix Descriptor", "Register Fragments and Shared Memory Matrix Layouts" of
//! wgmma, and "Tensor Copy" of cp.async.bulk.tensor):
//! - Matrix descriptor (64 bits): start address >> 4 in bits 0..14, leading-dimension byte
//!   offset >> 4 in bits 16..30, stride-dimension byte offset >> 4 in bits 32..46, matrix base
//!   offset in bits 49..52, swizzle mode in bits 62..64 (0 none, 1 128-byte, 2 64-byte,
//!   3 32-byte).
//! - A "core matrix" is 8 rows of 16 bytes (8 elements of 16 bits). For a K-major operand (the
//!   non-transposed A, M x K, and the non-transposed B, stored N x K) without swizzle, a core
//!   matrix's 8 rows are 16 bytes apart; core matrices adjacent in K are the leading byte offset
//!   apart and those adjacent in M (or N) the stride byte offset apart. With the 128-byte
//!   swizzle, a row is 128 bytes (64 elements of K), 8 rows form a 1024-byte atom, atoms
//!   adjacent in M (or N) are the stride byte offset apart, and the leading byte offset is not
//!   used; the 16-byte chunk `c` of row `r` of an atom sits at chunk `c ^ (r % 8)`, i.e. shared
//!   address bits 4..7 are XORed with bits 7..10. Advancing along K inside the 128-byte row is
//!   done by adding the byte offset to the start address, as the swizzle applies to the address.
//! - Accumulator D of m64nNk16 with f32: warp `w` of the warpgroup holds rows `16 w ..16 w + 16`;
//!   in that warp, register `4 i + j` of lane `l` holds row `16 w + l / 4 + 8 (j / 2)`, column
//!   `8 i + 2 (l % 4) + j % 2` (the m16n8 accumulator layout of mma.sync, repeated along N).
//!
//! What is not implemented is refused with a message: the 64- and 32-byte swizzles, a nonzero
//! matrix base offset, and transposed (MN-major) operands.

/// Swizzle mode of a matrix descriptor or a tensor map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swizzle {
    None,
    B128,
}

/// A decoded wgmma shared-memory matrix descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixDescriptor {
    /// Byte address in shared memory.
    pub start: u32,
    pub leading_byte_offset: u32,
    pub stride_byte_offset: u32,
    pub swizzle: Swizzle,
}

impl MatrixDescriptor {
    /// Decodes the 64-bit descriptor; an unsupported mode is an error naming it.
    pub fn decode(desc: u64) -> Result<MatrixDescriptor, String> {
        let field = |shift: u32| (((desc >> shift) & 0x3fff) as u32) << 4;
        let base_offset = (desc >> 49) & 7;
        if base_offset != 0 {
            return Err(format!(
                "matrix descriptor {desc:#018x}: base offset {base_offset} (only 0, tiles aligned to the swizzle atom, is implemented)"
            ));
        }
        let swizzle = match desc >> 62 {
            0 => Swizzle::None,
            1 => Swizzle::B128,
            2 => return Err(format!("matrix descriptor {desc:#018x}: the 64-byte swizzle is not implemented")),
            _ => return Err(format!("matrix descriptor {desc:#018x}: the 32-byte swizzle is not implemented")),
        };
        Ok(MatrixDescriptor { start: field(0), leading_byte_offset: field(16), stride_byte_offset: field(32), swizzle })
    }

    /// Encodes a descriptor (for tests and hosts that build one).
    pub fn encode(&self) -> u64 {
        let f = |v: u32| ((v >> 4) & 0x3fff) as u64;
        let mode = match self.swizzle {
            Swizzle::None => 0u64,
            Swizzle::B128 => 1,
        };
        f(self.start) | f(self.leading_byte_offset) << 16 | f(self.stride_byte_offset) << 32 | mode << 62
    }

    /// Shared address of the 8 consecutive K elements `8 * chunk .. 8 * chunk + 8` of row `row`
    /// (M for A, N for B) of a K-major operand of 16-bit elements: 16 contiguous bytes.
    pub fn k_major_chunk_addr(&self, row: u32, chunk: u32) -> u32 {
        match self.swizzle {
            Swizzle::None => {
                self.start + (row / 8) * self.stride_byte_offset + chunk * self.leading_byte_offset + (row % 8) * 16
            }
            Swizzle::B128 => {
                swizzle_128b(self.start + (row / 8) * self.stride_byte_offset + (row % 8) * 128 + chunk * 16)
            }
        }
    }
}

/// The 128-byte swizzle of a shared address: bits 4..7 XOR bits 7..10.
pub fn swizzle_128b(addr: u32) -> u32 {
    addr ^ (((addr >> 7) & 7) << 4)
}

/// (row, column) of accumulator register `reg` of lane `lane` of warp `warp` (0..4) of a
/// warpgroup, for m64nNk16 with f32 accumulators.
pub fn accumulator_position(warp: u32, lane: u32, reg: u32) -> (u32, u32) {
    let (i, j) = (reg / 4, reg % 4);
    (16 * warp + lane / 4 + 8 * (j / 2), 8 * i + 2 * (lane % 4) + j % 2)
}

/// Bytes of a tensor map (`CUtensorMap` is 128 bytes, 64-byte aligned).
pub const TENSOR_MAP_BYTES: usize = 128;

/// The first 8 bytes of a simulator tensor map.
const TENSOR_MAP_MAGIC: &[u8; 8] = b"LFSIMTM2";

/// A 2-D tiled tensor map as the simulator encodes it (the driver's encoding is opaque; the
/// kernel only hands the map's address to `cp.async.bulk.tensor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap2d {
    /// Global address of element (0, 0).
    pub base: u64,
    /// Elements of the inner (contiguous) and outer dimension.
    pub dims: [u64; 2],
    /// Bytes between consecutive rows (outer index).
    pub row_stride: u64,
    /// Box (tile) copied by one instruction: inner elements, outer rows.
    pub box_dims: [u32; 2],
    pub elem_bytes: u32,
    pub swizzle: Swizzle,
}

impl TensorMap2d {
    /// Checks the constraints cuTensorMapEncodeTiled places on what the kernels use.
    pub fn validate(&self) -> Result<(), String> {
        let row_bytes = self.box_dims[0] as u64 * self.elem_bytes as u64;
        if !matches!(self.elem_bytes, 1 | 2 | 4 | 8) {
            return Err(format!("element size {} bytes", self.elem_bytes));
        }
        if !self.base.is_multiple_of(16) || !self.row_stride.is_multiple_of(16) {
            return Err(format!(
                "global address {:#x} and row stride {} must be multiples of 16 bytes",
                self.base, self.row_stride
            ));
        }
        if self.box_dims.iter().any(|&b| b == 0 || b > 256) || !row_bytes.is_multiple_of(16) {
            return Err(format!("box {:?}: each side 1..=256, the inner one a multiple of 16 bytes", self.box_dims));
        }
        if self.swizzle == Swizzle::B128 && row_bytes != 128 {
            return Err(format!("the 128-byte swizzle needs 128-byte box rows, not {row_bytes}"));
        }
        if self.dims.contains(&0) {
            return Err(format!("empty tensor {:?}", self.dims));
        }
        Ok(())
    }

    pub fn encode(&self) -> [u8; TENSOR_MAP_BYTES] {
        let mut out = [0u8; TENSOR_MAP_BYTES];
        out[0..8].copy_from_slice(TENSOR_MAP_MAGIC);
        out[8..16].copy_from_slice(&self.base.to_le_bytes());
        out[16..24].copy_from_slice(&self.dims[0].to_le_bytes());
        out[24..32].copy_from_slice(&self.dims[1].to_le_bytes());
        out[32..40].copy_from_slice(&self.row_stride.to_le_bytes());
        out[40..44].copy_from_slice(&self.box_dims[0].to_le_bytes());
        out[44..48].copy_from_slice(&self.box_dims[1].to_le_bytes());
        out[48..52].copy_from_slice(&self.elem_bytes.to_le_bytes());
        out[52] = match self.swizzle {
            Swizzle::None => 0,
            Swizzle::B128 => 3,
        };
        out
    }

    pub fn decode(bytes: &[u8; TENSOR_MAP_BYTES]) -> Result<TensorMap2d, String> {
        if &bytes[0..8] != TENSOR_MAP_MAGIC {
            return Err("not a tensor map the simulator encoded (Gpu::tensor_map_2d)".into());
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let map = TensorMap2d {
            base: u64_at(8),
            dims: [u64_at(16), u64_at(24)],
            row_stride: u64_at(32),
            box_dims: [u32_at(40), u32_at(44)],
            elem_bytes: u32_at(48),
            swizzle: match bytes[52] {
                0 => Swizzle::None,
                3 => Swizzle::B128,
                s => return Err(format!("tensor map swizzle {s}")),
            },
        };
        map.validate()?;
        Ok(map)
    }

    /// Bytes one box copies (the transaction count it completes, out-of-bounds fill included).
    pub fn box_bytes(&self) -> u32 {
        self.box_dims[0] * self.box_dims[1] * self.elem_bytes
    }

    /// Where element `(inner, row)` of a box landing at shared `dst` goes.
    pub fn shared_addr(&self, dst: u32, inner: u32, row: u32) -> u32 {
        let linear = dst + row * self.box_dims[0] * self.elem_bytes + inner * self.elem_bytes;
        match self.swizzle {
            Swizzle::None => linear,
            Swizzle::B128 => swizzle_128b(linear),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_fields_round_trip_and_drop_the_low_four_bits() {
        let d = MatrixDescriptor {
            start: 0x1230,
            leading_byte_offset: 128,
            stride_byte_offset: 1024,
            swizzle: Swizzle::B128,
        };
        let bits = d.encode();
        assert_eq!(bits & 0x3fff, 0x123);
        assert_eq!((bits >> 16) & 0x3fff, 8);
        assert_eq!((bits >> 32) & 0x3fff, 64);
        assert_eq!(bits >> 62, 1);
        assert_eq!(MatrixDescriptor::decode(bits), Ok(d));
        assert!(MatrixDescriptor::decode(2 << 62).unwrap_err().contains("64-byte"));
        assert!(MatrixDescriptor::decode(3 << 62).unwrap_err().contains("32-byte"));
        assert!(MatrixDescriptor::decode(1 << 49).unwrap_err().contains("base offset"));
    }

    #[test]
    fn the_128_byte_swizzle_permutes_the_chunks_of_a_row_by_its_index_in_the_atom() {
        // Row 0 keeps its chunks; row 3's chunk 0 lands at chunk 3, its chunk 5 at 6.
        assert_eq!(swizzle_128b(0x40), 0x40);
        assert_eq!(swizzle_128b(3 * 128), 3 * 128 + 3 * 16);
        assert_eq!(swizzle_128b(3 * 128 + 5 * 16 + 2), 3 * 128 + 6 * 16 + 2);
        // The next atom repeats the pattern.
        assert_eq!(swizzle_128b(1024 + 3 * 128), 1024 + 3 * 128 + 3 * 16);
    }

    #[test]
    fn k_major_chunks_follow_the_core_matrix_strides() {
        let none =
            MatrixDescriptor { start: 256, leading_byte_offset: 128, stride_byte_offset: 256, swizzle: Swizzle::None };
        assert_eq!(none.k_major_chunk_addr(0, 0), 256);
        assert_eq!(none.k_major_chunk_addr(5, 0), 256 + 5 * 16);
        assert_eq!(none.k_major_chunk_addr(5, 1), 256 + 128 + 5 * 16);
        assert_eq!(none.k_major_chunk_addr(13, 1), 256 + 256 + 128 + 5 * 16);
        // 128-byte swizzle with the start advanced 32 bytes along K (k = 16..32).
        let sw = MatrixDescriptor {
            start: 2048 + 32,
            leading_byte_offset: 16,
            stride_byte_offset: 1024,
            swizzle: Swizzle::B128,
        };
        assert_eq!(sw.k_major_chunk_addr(0, 0), 2048 + 32);
        // Row 9 is row 1 of the second atom: logical chunk 2 goes to chunk 3.
        assert_eq!(sw.k_major_chunk_addr(9, 0), 2048 + 1024 + 128 + 3 * 16);
        assert_eq!(sw.k_major_chunk_addr(9, 1), 2048 + 1024 + 128 + 2 * 16);
    }

    #[test]
    fn accumulator_registers_tile_the_64_rows_by_warp_and_n_by_eights() {
        assert_eq!(accumulator_position(0, 0, 0), (0, 0));
        assert_eq!(accumulator_position(0, 0, 1), (0, 1));
        assert_eq!(accumulator_position(0, 0, 2), (8, 0));
        assert_eq!(accumulator_position(0, 5, 3), (9, 3));
        assert_eq!(accumulator_position(2, 31, 4 * 7 + 3), (32 + 7 + 8, 56 + 6 + 1));
        // Every (row, col) of a 64x16 tile is held exactly once.
        let mut seen = [[0u8; 16]; 64];
        for w in 0..4 {
            for l in 0..32 {
                for r in 0..8 {
                    let (m, n) = accumulator_position(w, l, r);
                    seen[m as usize][n as usize] += 1;
                }
            }
        }
        assert!(seen.iter().flatten().all(|&c| c == 1));
    }

    #[test]
    fn tensor_maps_round_trip_and_refuse_what_the_driver_would() {
        let map = TensorMap2d {
            base: 0x1000,
            dims: [100, 7],
            row_stride: 208,
            box_dims: [64, 32],
            elem_bytes: 2,
            swizzle: Swizzle::B128,
        };
        assert_eq!(TensorMap2d::decode(&map.encode()), Ok(map));
        assert_eq!(map.box_bytes(), 4096);
        assert_eq!(map.shared_addr(1024, 8, 1), 1024 + 128);
        let bad = TensorMap2d { box_dims: [32, 32], ..map };
        assert!(bad.validate().unwrap_err().contains("128-byte box rows"));
        assert!(TensorMap2d::decode(&[0; TENSOR_MAP_BYTES]).is_err());
    }
}
