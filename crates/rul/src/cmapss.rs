//! NASA's C-MAPSS turbofan data (Saxena et al. 2008): one whitespace-separated row per
//! engine and cycle, `unit cycle setting1..3 sensor1..21`; `.gz` files are read as they
//! are distributed.

use std::io::Read;
use std::path::Path;

use crate::RulError;

/// Operational settings per row.
pub const SETTINGS: usize = 3;
/// Sensor measurements per row.
pub const SENSORS: usize = 21;
/// Largest file read (decompressed), bytes.
pub const MAX_BYTES: u64 = 256 << 20;

/// One engine's run: its cycles in order, each `SETTINGS + SENSORS` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub id: u32,
    pub rows: Vec<Vec<f64>>,
}

fn read_text(path: &Path) -> Result<String, RulError> {
    let file_err = |message: String| RulError::File {
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?;
    let gz = path.extension().is_some_and(|x| x == "gz");
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut text = String::new();
    reader
        .take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| file_err(e.to_string()))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(file_err(format!("more than {MAX_BYTES} bytes")));
    }
    Ok(text)
}

/// Reads a `train_FD00x` or `test_FD00x` file: units in the order they first appear, each
/// unit's cycles consecutive from 1.
pub fn read(path: &Path) -> Result<Vec<Unit>, RulError> {
    let text = read_text(path)?;
    let at = |line: usize, message: String| RulError::At {
        path: path.display().to_string(),
        line,
        message,
    };
    let mut units: Vec<Unit> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.len() != 2 + SETTINGS + SENSORS {
            return Err(at(
                n,
                format!(
                    "{} values, expected {} (unit, cycle, 3 settings, 21 sensors)",
                    cells.len(),
                    2 + SETTINGS + SENSORS
                ),
            ));
        }
        let mut values = Vec::with_capacity(cells.len());
        for (k, c) in cells.iter().enumerate() {
            match c.parse::<f64>() {
                Ok(v) if v.is_finite() => values.push(v),
                _ => return Err(at(n, format!("value {} ({c:?}) is not a number", k + 1))),
            }
        }
        let (unit, cycle) = match (values.first(), values.get(1)) {
            (Some(&u), Some(&c))
                if u >= 1.0 && c >= 1.0 && u.fract() == 0.0 && c.fract() == 0.0 =>
            {
                (u as u32, c as usize)
            }
            _ => return Err(at(n, "unit and cycle must be whole numbers from 1".into())),
        };
        let row = values.split_off(2);
        match units.last_mut() {
            Some(u) if u.id == unit => {
                if cycle != u.rows.len() + 1 {
                    return Err(at(
                        n,
                        format!("unit {unit}: cycle {cycle} follows cycle {}", u.rows.len()),
                    ));
                }
                u.rows.push(row);
            }
            _ => {
                if units.iter().any(|u| u.id == unit) {
                    return Err(at(
                        n,
                        format!("unit {unit} appears again after other units"),
                    ));
                }
                if cycle != 1 {
                    return Err(at(n, format!("unit {unit} starts at cycle {cycle}, not 1")));
                }
                units.push(Unit {
                    id: unit,
                    rows: vec![row],
                });
            }
        }
    }
    if units.is_empty() {
        return Err(RulError::File {
            path: path.display().to_string(),
            message: "no rows".into(),
        });
    }
    Ok(units)
}

/// Reads an `RUL_FD00x` file: the true RUL of each test unit after its last cycle.
pub fn read_rul(path: &Path) -> Result<Vec<f64>, RulError> {
    let text = read_text(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| RulError::At {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: format!("{:?} is not a remaining useful life", l.trim()),
                })
        })
        .collect()
}
