//! Line numbers from a code object's line table, decoded here rather than by calling
//! `PyCode_Addr2Line`, which on 3.11 may read a table another thread is still building.

/// The line of the instruction at byte offset `address`, from a 3.10 `co_linetable`
/// (pairs of unsigned byte delta, signed line delta; -128: no line).
pub fn line_310(table: &[u8], first_line: i32, address: u32) -> Option<u32> {
    let mut line = first_line;
    let mut end = 0u32;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u32::from(pair[0]);
        let delta = pair[1] as i8;
        let this_line = if delta == -128 {
            None
        } else {
            line += i32::from(delta);
            Some(line)
        };
        if start <= address && address < end {
            return this_line.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// Reads a 6-bit-chunk varint of the 3.11+ location table.
fn varint(table: &[u8], at: &mut usize) -> Option<u32> {
    let mut byte = *table.get(*at)?;
    *at += 1;
    let mut value = u32::from(byte & 63);
    let mut shift = 6;
    while byte & 64 != 0 {
        byte = *table.get(*at)?;
        *at += 1;
        value |= u32::from(byte & 63).checked_shl(shift)?;
        shift += 6;
    }
    Some(value)
}

fn signed_varint(table: &[u8], at: &mut usize) -> Option<i32> {
    let value = varint(table, at)?;
    Some(if value & 1 == 1 {
        -((value >> 1) as i32)
    } else {
        (value >> 1) as i32
    })
}

/// The line of the instruction at code unit `unit`, from a 3.11+ location table
/// (CPython's `Objects/locations.md`).
pub fn line_311(table: &[u8], first_line: i32, unit: u32) -> Option<u32> {
    let mut line = first_line;
    let mut at = 0usize;
    let mut start = 0u32;
    while at < table.len() {
        let head = table[at];
        at += 1;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let length = u32::from(head & 7) + 1;
        let this_line = match code {
            15 => None,
            14 => {
                line += signed_varint(table, &mut at)?;
                varint(table, &mut at)?;
                varint(table, &mut at)?;
                varint(table, &mut at)?;
                Some(line)
            }
            13 => {
                line += signed_varint(table, &mut at)?;
                Some(line)
            }
            10..=12 => {
                line += i32::from(code) - 10;
                at += 2;
                Some(line)
            }
            _ => {
                at += 1;
                Some(line)
            }
        };
        if start <= unit && unit < start + length {
            return this_line.and_then(|l| u32::try_from(l).ok());
        }
        start += length;
    }
    None
}
