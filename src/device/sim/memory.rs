//! Simulated device memory: a table of host allocations at 256-byte-aligned device addresses.
//!
//! Each allocation is bounded by the size asked for, and the next one starts at least 256 bytes
//! after its end, so an access just past a buffer lands in no allocation and is caught. Device
//! addresses start high (above 4 GiB) so a pointer truncated to 32 bits never aliases a buffer.
//!
//! Kernels of one launch run on several host threads at once and may touch the same bytes (a
//! racy kernel does on hardware too): storage is reached through raw pointers while a launch
//! holds the table's read lock; allocating and freeing take the write lock, so a buffer cannot
//! disappear under a running kernel.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::{RwLock, RwLockReadGuard};

use super::{SimError, SimResult};

/// Alignment and spacing of device addresses.
pub const DEVICE_ALIGN: u64 = 256;
/// The first device address handed out.
const FIRST_ADDRESS: u64 = 0x0000_0007_0000_0000;

/// One device buffer.
pub struct Allocation {
    pub base: u64,
    pub size: usize,
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the storage is plain bytes owned by the allocation; concurrent access goes through
// raw pointers under the table's lock discipline described in the module doc.
unsafe impl Send for Allocation {}
unsafe impl Sync for Allocation {}

impl Allocation {
    fn new(base: u64, size: usize) -> SimResult<Allocation> {
        let layout = Layout::from_size_align(size.max(1), DEVICE_ALIGN as usize)
            .map_err(|e| SimError::Memory(format!("allocating {size} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(SimError::Memory(format!("out of host memory allocating {size} bytes")));
        }
        Ok(Allocation { base, size, ptr, layout })
    }

    /// Host pointer to the byte at device address `addr` when `[addr, addr + len)` lies inside.
    #[inline]
    pub fn host_ptr(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let off = addr.checked_sub(self.base)? as usize;
        (off.checked_add(len)? <= self.size).then(|| {
            // SAFETY: off + len <= size, inside the allocation.
            unsafe { self.ptr.add(off) }
        })
    }

    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size as u64
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// The live allocations, sorted by base address.
pub struct Table {
    allocations: Vec<Allocation>,
    next: u64,
}

impl Table {
    /// The allocation that holds all of `[addr, addr + len)`.
    #[inline]
    pub fn find(&self, addr: u64, len: usize) -> Option<&Allocation> {
        let i = self.allocations.partition_point(|a| a.base <= addr);
        let a = self.allocations.get(i.checked_sub(1)?)?;
        a.host_ptr(addr, len).map(|_| a)
    }

    /// Host pointer for `[addr, addr + len)`, or None when it is not inside one allocation.
    #[inline]
    pub fn resolve(&self, addr: u64, len: usize) -> Option<*mut u8> {
        self.find(addr, len).and_then(|a| a.host_ptr(addr, len))
    }

    pub fn allocations(&self) -> &[Allocation] {
        &self.allocations
    }
}

pub struct DeviceMemory {
    table: RwLock<Table>,
}

impl Default for DeviceMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceMemory {
    pub fn new() -> DeviceMemory {
        DeviceMemory { table: RwLock::new(Table { allocations: Vec::new(), next: FIRST_ADDRESS }) }
    }

    /// The table, read-locked: launches hold this for their whole run.
    pub fn table(&self) -> RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A zeroed buffer of `bytes` bytes (the driver's memory is not zeroed; the device layer
    /// poisons what it hands out uninitialised).
    pub fn alloc(&self, bytes: usize) -> SimResult<u64> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        let base = t.next;
        let span = (bytes as u64).max(1).div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN + DEVICE_ALIGN;
        t.next = base
            .checked_add(span)
            .ok_or_else(|| SimError::Memory("the simulated address space is exhausted".into()))?;
        let a = Allocation::new(base, bytes)?;
        // Addresses only grow, so pushing keeps the table sorted.
        t.allocations.push(a);
        Ok(base)
    }

    pub fn free(&self, addr: u64) -> SimResult<()> {
        let mut t = self.table.write().unwrap_or_else(|e| e.into_inner());
        match t.allocations.binary_search_by_key(&addr, |a| a.base) {
            Ok(i) => {
                t.allocations.remove(i);
                Ok(())
            }
            Err(_) => Err(SimError::Memory(format!("free of {addr:#x}, which is not the start of an allocation"))),
        }
    }

    fn host_range(&self, t: &Table, addr: u64, len: usize, what: &str) -> SimResult<*mut u8> {
        t.resolve(addr, len)
            .ok_or_else(|| SimError::Memory(format!("{what} of {len} bytes at {addr:#x} is not inside one allocation")))
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> SimResult<()> {
        let t = self.table();
        let p = self.host_range(&t, addr, data.len(), "copy to the device")?;
        // SAFETY: the range is inside a live allocation held by the read lock.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> SimResult<()> {
        let t = self.table();
        let p = self.host_range(&t, addr, out.len(), "copy from the device")?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    pub fn fill(&self, addr: u64, len: usize, byte: u8) -> SimResult<()> {
        let t = self.table();
        let p = self.host_range(&t, addr, len, "memset")?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(p, byte, len) };
        Ok(())
    }

    /// Live allocations and their total bytes.
    pub fn usage(&self) -> (usize, usize) {
        let t = self.table();
        (t.allocations.len(), t.allocations.iter().map(|a| a.size).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_aligned_spaced_and_bounded() {
        let m = DeviceMemory::new();
        let a = m.alloc(10).unwrap();
        let b = m.alloc(256).unwrap();
        assert_eq!(a % DEVICE_ALIGN, 0);
        assert_eq!(b % DEVICE_ALIGN, 0);
        assert!(b >= a + 10 + DEVICE_ALIGN, "no gap after the first buffer");
        m.write(a, &[1; 10]).unwrap();
        assert!(m.write(a, &[1; 11]).is_err(), "a copy past the end must fail");
        assert!(m.table().resolve(a + 10, 1).is_none(), "one past the end is in no allocation");
        let mut out = [0u8; 4];
        m.read(a + 6, &mut out).unwrap();
        assert_eq!(out, [1; 4]);
        m.fill(b, 256, 7).unwrap();
        m.read(b + 252, &mut out).unwrap();
        assert_eq!(out, [7; 4]);
        m.free(a).unwrap();
        assert!(m.read(a, &mut out).is_err(), "a freed buffer is gone");
        assert!(m.free(b + 4).is_err());
        assert_eq!(m.usage(), (1, 256));
    }
}
