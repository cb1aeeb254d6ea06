//! Dense attribute storage, as an attribute info message points to it: the name-index v2
//! B-tree (`BTHD`, `BTIN`, `BTLF`) and the fractal heap (`FRHP`, `FHIB`, `FHDB`) with
//! managed, tiny and huge objects.

use std::io::{Read, Seek};

use super::{malformed, AttrValue, Bytes, Reader, UNDEFINED};
use crate::InspectError;

fn log2(n: u64) -> u32 {
    63 - n.max(1).leading_zeros()
}

/// Bytes needed to encode values up to `limit` (HDF5's `H5VM_limit_enc_size`).
fn limit_enc_size(limit: u64) -> usize {
    log2(limit) as usize / 8 + 1
}

/// A parsed fractal heap header: what locating an object needs.
struct Heap {
    id_len: usize,
    huge_btree: u64,
    huge_ids_direct: bool,
    huge_id_size: usize,
    width: u64,
    start_block: u64,
    max_direct_rows: u32,
    first_row_bits: u32,
    root: u64,
    root_rows: u32,
    off_size: usize,
    len_size: usize,
}

impl Heap {
    /// Rows 0 and 1 hold blocks of the starting size; each further row doubles it.
    fn row_block_size(&self, row: u32) -> Option<u64> {
        let doubling = 1u64.checked_shl(row.saturating_sub(1))?;
        self.start_block.checked_mul(doubling)
    }

    fn row_block_offset(&self, row: u32) -> Option<u64> {
        match row {
            0 => Some(0),
            r => self.row_block_size(r)?.checked_mul(self.width),
        }
    }

    /// The row and column of the block holding `offset`, relative to an indirect block.
    fn locate(&self, offset: u64) -> Option<(u32, u64)> {
        let first_row = self.start_block.checked_mul(self.width)?;
        if offset < first_row {
            return Some((0, offset / self.start_block));
        }
        let high_bit = log2(offset);
        let row = high_bit.checked_sub(self.first_row_bits)? + 1;
        Some((
            row,
            (offset - (1u64 << high_bit)) / self.row_block_size(row)?,
        ))
    }
}

impl<R: Read + Seek> Reader<'_, R> {
    /// The attributes an attribute info message keeps in dense storage.
    pub(super) fn dense_attributes(
        &mut self,
        body: &[u8],
        at: u64,
        attributes: &mut Vec<(String, AttrValue)>,
    ) -> Result<(), InspectError> {
        let mut b = Bytes::new(body, at);
        b.u8()?;
        let flags = b.u8()?;
        b.take(if flags & 0x01 != 0 { 2 } else { 0 })?;
        let heap_addr = self.addr(&mut b)?;
        let names = self.addr(&mut b)?;
        if heap_addr == UNDEFINED || names == UNDEFINED {
            return Ok(());
        }
        let heap = self.heap(heap_addr)?;
        for record in self.btree(names, 8)? {
            let id = record.get(..heap.id_len).unwrap_or_default();
            if record
                .get(heap.id_len)
                .is_none_or(|flags| flags & 0x01 != 0)
            {
                return Err(InspectError::Unsupported(
                    "HDF5 shared attributes in dense storage (SOHM)".into(),
                ));
            }
            let object = self.heap_object(&heap, id, at)?;
            attributes.push(self.attribute(&object, at)?);
        }
        Ok(())
    }

    fn heap(&mut self, addr: u64) -> Result<Heap, InspectError> {
        let buf = self.read_up_to(addr, 512)?;
        let mut b = Bytes::new(&buf, self.base.saturating_add(addr));
        if b.take(4)? != b"FRHP" || b.u8()? != 0 {
            return Err(malformed(b.at, "no FRHP v0 fractal heap"));
        }
        let id_len = usize::from(b.uint(2)? as u16);
        if b.uint(2)? != 0 {
            return Err(InspectError::Unsupported(
                "HDF5 fractal heaps with I/O filters".into(),
            ));
        }
        b.u8()?; // flags
        let max_managed = b.uint(4)?;
        self.len(&mut b)?; // next huge object id
        let huge_btree = self.addr(&mut b)?;
        self.len(&mut b)?;
        self.addr(&mut b)?; // free space manager
        for _ in 0..8 {
            self.len(&mut b)?; // managed, allocated, iterator, object counts and sizes
        }
        let width = b.uint(2)?;
        let start_block = self.len(&mut b)?;
        let max_direct = self.len(&mut b)?;
        let max_heap_bits = b.uint(2)?;
        b.take(2)?;
        let root = self.addr(&mut b)?;
        let root_rows = b.uint(2)? as u32;
        let sizes_ok = width.is_power_of_two()
            && start_block.is_power_of_two()
            && max_direct.is_power_of_two()
            && max_direct >= start_block
            && (1..=64).contains(&max_heap_bits)
            && id_len >= 2;
        if !sizes_ok {
            return Err(malformed(b.at, "inconsistent fractal heap"));
        }
        let huge_ids_direct = id_len > self.sizeof_addr + self.sizeof_len;
        Ok(Heap {
            id_len,
            huge_btree,
            huge_ids_direct,
            huge_id_size: (id_len - 1).min(8),
            width,
            start_block,
            max_direct_rows: log2(max_direct) - log2(start_block) + 2,
            first_row_bits: log2(start_block) + log2(width),
            root,
            root_rows,
            off_size: (max_heap_bits as usize).div_ceil(8),
            len_size: (log2(max_direct) as usize)
                .div_ceil(8)
                .min(limit_enc_size(max_managed)),
        })
    }

    fn heap_object(&mut self, heap: &Heap, id: &[u8], at: u64) -> Result<Vec<u8>, InspectError> {
        let mut b = Bytes::new(id, at);
        let flags = b.u8()?;
        if flags >> 6 != 0 {
            return Err(malformed(at, "fractal heap id of an unknown version"));
        }
        match (flags >> 4) & 0x03 {
            0 => {
                let offset = b.uint(heap.off_size)?;
                let len = b.uint(heap.len_size)?;
                self.managed_object(heap, offset, len, at)
            }
            1 if heap.huge_ids_direct => {
                let addr = self.addr(&mut b)?;
                let len = self.len(&mut b)?;
                self.read(addr, len)
            }
            1 => {
                let key = b.uint(heap.huge_id_size)?;
                for record in self.btree(heap.huge_btree, 1)? {
                    let mut r = Bytes::new(&record, at);
                    let (addr, len) = (self.addr(&mut r)?, self.len(&mut r)?);
                    if self.len(&mut r)? == key {
                        return self.read(addr, len);
                    }
                }
                Err(malformed(at, "huge heap object not in its B-tree"))
            }
            2 => {
                let (len, data) = if heap.id_len <= 18 {
                    (usize::from(flags & 0x0f) + 1, &id[1..])
                } else {
                    let extra = usize::from(b.u8()?);
                    ((usize::from(flags & 0x0f) << 8 | extra) + 1, &id[2..])
                };
                let data = data
                    .get(..len)
                    .ok_or_else(|| malformed(at, "tiny heap object overruns its id"))?;
                Ok(data.to_vec())
            }
            _ => Err(malformed(at, "fractal heap id of an unknown type")),
        }
    }

    /// Follows the doubling table from the root block to the direct block holding `offset`.
    fn managed_object(
        &mut self,
        heap: &Heap,
        offset: u64,
        len: u64,
        at: u64,
    ) -> Result<Vec<u8>, InspectError> {
        let bad = || malformed(at, "heap offset outside its doubling table");
        let (mut block, mut block_offset, mut rows, mut block_size) =
            (heap.root, 0u64, heap.root_rows, heap.start_block);
        for _ in 0..16 {
            if rows == 0 {
                let inside = offset - block_offset;
                if inside.checked_add(len).is_none_or(|end| end > block_size) {
                    return Err(bad());
                }
                return self.read(block.checked_add(inside).ok_or_else(bad)?, len);
            }
            let (row, column) = heap.locate(offset - block_offset).ok_or_else(bad)?;
            if row >= rows || column >= heap.width {
                return Err(bad());
            }
            let direct_rows = rows.min(heap.max_direct_rows);
            let entry = if row < heap.max_direct_rows {
                u64::from(row) * heap.width + column
            } else {
                u64::from(direct_rows) * heap.width
                    + u64::from(row - heap.max_direct_rows) * heap.width
                    + column
            };
            let position =
                (4 + 1 + self.sizeof_addr + heap.off_size) as u64 + entry * self.sizeof_addr as u64;
            let raw = self.read(
                block.checked_add(position).ok_or_else(bad)?,
                self.sizeof_addr as u64,
            )?;
            let size = heap.row_block_size(row).ok_or_else(bad)?;
            block_offset = heap
                .row_block_offset(row)
                .and_then(|o| o.checked_add(column.checked_mul(size)?))
                .and_then(|o| o.checked_add(block_offset))
                .ok_or_else(bad)?;
            block = self.addr(&mut Bytes::new(&raw, at))?;
            block_size = size;
            rows = match row < heap.max_direct_rows {
                true => 0,
                false => (log2(size) + 1)
                    .checked_sub(heap.first_row_bits)
                    .ok_or_else(bad)?,
            };
            if offset < block_offset || block == UNDEFINED {
                return Err(bad());
            }
        }
        Err(bad())
    }

    /// Every record of the v2 B-tree at `addr`, whose records must be of `kind`.
    fn btree(&mut self, addr: u64, kind: u8) -> Result<Vec<Vec<u8>>, InspectError> {
        let buf = self.read_up_to(addr, 64)?;
        let mut b = Bytes::new(&buf, self.base.saturating_add(addr));
        if b.take(4)? != b"BTHD" || b.u8()? != 0 || b.u8()? != kind {
            return Err(malformed(b.at, "unexpected v2 B-tree header"));
        }
        let node_size = b.uint(4)?;
        let record_size = b.uint(2)?;
        let depth = b.uint(2)? as u32;
        b.take(2)?;
        let root = self.addr(&mut b)?;
        let root_records = b.uint(2)?;
        if record_size == 0 || node_size < 10 + record_size || depth > 32 {
            return Err(malformed(b.at, "inconsistent v2 B-tree sizes"));
        }
        // Widths of the child pointers' record counts, as `H5B2__hdr_init` derives them.
        let leaf_max = (node_size - 10) / record_size;
        let count_size = limit_enc_size(leaf_max);
        let mut cumulative = vec![(leaf_max, 0usize)];
        for level in 1..=depth as usize {
            let pointer = (self.sizeof_addr + count_size + cumulative[level - 1].1) as u64;
            let max = node_size.saturating_sub(10 + pointer) / (record_size + pointer);
            let total = (max + 1)
                .saturating_mul(cumulative[level - 1].0)
                .saturating_add(max);
            cumulative.push((total, limit_enc_size(total)));
        }
        let mut records = Vec::new();
        let mut stack = vec![(root, root_records, depth)];
        while let Some((node, count, level)) = stack.pop() {
            if node == UNDEFINED || (count == 0 && level == 0) {
                continue;
            }
            self.count(1 + count)?;
            let image = self.read(node, node_size)?;
            let mut n = Bytes::new(&image, self.base.saturating_add(node));
            let signature = if level == 0 { b"BTLF" } else { b"BTIN" };
            if n.take(4)? != signature || n.u8()? != 0 || n.u8()? != kind {
                return Err(malformed(n.at, "v2 B-tree node of the wrong kind"));
            }
            for _ in 0..count {
                records.push(n.take(record_size as usize)?.to_vec());
            }
            if level > 0 {
                for _ in 0..=count {
                    let child = self.addr(&mut n)?;
                    let child_count = n.uint(count_size)?;
                    n.take(if level > 1 {
                        cumulative[level as usize - 1].1
                    } else {
                        0
                    })?;
                    stack.push((child, child_count, level - 1));
                }
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::attributes;
    use super::super::AttrValue;
    use crate::formats::keras;

    #[test]
    fn reads_deep_dense_storage() {
        let dir = keras::fixtures::make();
        let attributes = attributes(&dir.path().join("many_attrs.h5")).expect("many_attrs.h5");
        assert_eq!(attributes.len(), 12001);
        for i in [0usize, 1, 2, 3, 4097, 11999] {
            let expected = if i % 3 == 0 {
                AttrValue::Int(i as i64)
            } else {
                AttrValue::Text(format!("value {i}"))
            };
            let name = format!("attribute_{i:05}");
            assert!(attributes.contains(&(name.clone(), expected)), "{name}");
        }
        assert!(attributes.contains(&("pi".to_owned(), AttrValue::Float(3.25))));
    }
}
