//! V2 tensors: typed or raw (little-endian bytes; BYTES elements as a 4-byte length and the bytes), checked
//! against the model's input (name, datatype, shape, byte count) and turned into the pipeline's windows.

use crate::api::kserve::{TensorMeta, V2Error};
use crate::error::quote;

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Data,
}

impl Tensor {
    /// The elements as raw bytes (the binary extension, `raw_output_contents`).
    pub fn raw(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bytes(items) => items
                .iter()
                .flat_map(|b| {
                    (b.len() as u32)
                        .to_le_bytes()
                        .into_iter()
                        .chain(b.iter().copied())
                })
                .collect(),
        }
    }
}

/// Elements a shape holds, if every dimension is known and non-negative.
pub(crate) fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Most dimensions of a shape quoted back in an error.
const SHOWN_DIMS: usize = 8;

/// A client's shape as an error quotes it: at most [`SHOWN_DIMS`] dimensions.
pub(crate) fn shape_text(shape: &[i64]) -> String {
    if shape.len() <= SHOWN_DIMS {
        return format!("{shape:?}");
    }
    format!("{:?}... ({} dimensions)", &shape[..SHOWN_DIMS], shape.len())
}

/// The values a shape holds, or why it cannot be served: a negative dimension, or more values than fit in memory.
fn values_of(name: &str, shape: &[i64]) -> Result<usize, V2Error> {
    if shape.iter().any(|d| *d < 0) {
        return Err(V2Error::Tensor(format!(
            "input {} has shape {}: dimensions must be 0 or more",
            quote(name),
            shape_text(shape)
        )));
    }
    elements(shape)
        .filter(|n| n.checked_mul(4).is_some())
        .ok_or_else(|| {
            V2Error::Tensor(format!(
                "input {} has shape {}: it holds more values than a request may",
                quote(name),
                shape_text(shape)
            ))
        })
}

/// Float elements from raw little-endian bytes, for a tensor of `shape`.
pub(crate) fn f32_from_raw(name: &str, shape: &[i64], bytes: &[u8]) -> Result<Vec<f32>, V2Error> {
    let want = values_of(name, shape)?;
    if bytes.len() != want * 4 {
        return Err(V2Error::Tensor(format!(
            "input {} of shape {} and datatype FP32 needs {} bytes; {} were sent",
            quote(name),
            shape_text(shape),
            want * 4,
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The windows in the model's input tensor: name, datatype and shape `[N, channels, window]` (N >= 1) must match
/// `meta`; samples must be finite. Windows come out as interleaved frames, as the pipeline takes them.
pub(crate) fn windows(
    input: Tensor,
    meta: &TensorMeta,
    channels: usize,
) -> Result<Vec<Vec<f32>>, V2Error> {
    if input.name != meta.name {
        return Err(V2Error::Tensor(format!(
            "input {} is unknown; the model takes one input, `{}`",
            quote(&input.name),
            meta.name
        )));
    }
    if input.datatype != meta.datatype {
        return Err(V2Error::Tensor(format!(
            "input {} has datatype {}; the model takes {}",
            quote(&input.name),
            quote(&input.datatype),
            meta.datatype
        )));
    }
    let shape_ok = input.shape.len() == meta.shape.len()
        && input.shape[0] >= 1
        && input.shape[1..] == meta.shape[1..];
    if !shape_ok {
        return Err(V2Error::Tensor(format!(
            "input {} has shape {}; the model takes [N, {}, {}] with N >= 1",
            quote(&input.name),
            shape_text(&input.shape),
            meta.shape[1],
            meta.shape[2]
        )));
    }
    let Data::F32(values) = input.data else {
        return Err(V2Error::Tensor(format!(
            "input {} holds no FP32 data",
            quote(&input.name)
        )));
    };
    let want = values_of(&input.name, &input.shape)?;
    if values.len() != want {
        return Err(V2Error::Tensor(format!(
            "input {} of shape {} needs {want} values; {} were sent",
            quote(&input.name),
            shape_text(&input.shape),
            values.len()
        )));
    }
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(V2Error::Tensor(format!(
            "input {} value {i} is {}; samples must be finite",
            quote(&input.name),
            values[i]
        )));
    }
    let window = meta.shape[2] as usize;
    let per = channels * window;
    Ok(values
        .chunks_exact(per)
        .map(|w| {
            if channels == 1 {
                return w.to_vec();
            }
            // [channels, window] -> interleaved frames.
            let mut frames = vec![0.0; per];
            for c in 0..channels {
                for t in 0..window {
                    frames[t * channels + c] = w[c * window + t];
                }
            }
            frames
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> TensorMeta {
        TensorMeta {
            name: "vibration",
            datatype: "FP32",
            shape: vec![-1, 2, 3],
        }
    }

    fn input(name: &str, dtype: &str, shape: Vec<i64>, values: Vec<f32>) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: dtype.into(),
            shape,
            data: Data::F32(values),
        }
    }

    #[test]
    fn channels_first_becomes_interleaved_frames() {
        let w = windows(
            input(
                "vibration",
                "FP32",
                vec![1, 2, 3],
                vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0],
            ),
            &meta(),
            2,
        )
        .unwrap();
        assert_eq!(w, vec![vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0]]);
    }

    #[test]
    fn every_mismatch_says_which() {
        let cases = [
            (
                input("x", "FP32", vec![1, 2, 3], vec![0.0; 6]),
                "\"x\" is unknown",
            ),
            (
                input("vibration", "FP64", vec![1, 2, 3], vec![0.0; 6]),
                "datatype \"FP64\"",
            ),
            (
                input("vibration", "FP32", vec![1, 3, 2], vec![0.0; 6]),
                "shape [1, 3, 2]",
            ),
            (input("vibration", "FP32", vec![0, 2, 3], vec![]), "N >= 1"),
            (
                input("vibration", "FP32", vec![2, 2, 3], vec![0.0; 6]),
                "needs 12 values",
            ),
            (
                input(
                    "vibration",
                    "FP32",
                    vec![1, 2, 3],
                    vec![0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0],
                ),
                "finite",
            ),
        ];
        for (t, text) in cases {
            let e = windows(t, &meta(), 2).unwrap_err().to_string();
            assert!(e.contains(text), "{e} / {text}");
        }
        let e = f32_from_raw("vibration", &[1, 2, 3], &[0; 23])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 24 bytes; 23 were sent"), "{e}");
    }

    #[test]
    fn a_shape_too_large_to_hold_says_so() {
        let huge = vec![i64::MAX, 2, 3];
        let e = windows(input("vibration", "FP32", huge.clone(), vec![]), &meta(), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more values than a request may"), "{e}");
        assert!(!e.contains("needs 0 values"), "{e}");
        let e = f32_from_raw("vibration", &[i64::MAX, 1, 8192], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more values than a request may"), "{e}");
        // 2^62 values fit a usize but not as bytes.
        let e = f32_from_raw("vibration", &[1 << 62], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("more values than a request may"), "{e}");
        let e = f32_from_raw("vibration", &[-1, 2], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 or more"), "{e}");
        let long: Vec<i64> = vec![1; 1000];
        assert_eq!(
            shape_text(&long),
            "[1, 1, 1, 1, 1, 1, 1, 1]... (1000 dimensions)"
        );
    }

    #[test]
    fn client_names_are_quoted_briefly() {
        let name = "n".repeat(1 << 20);
        let e = windows(
            input(&name, "FP32", vec![1, 2, 3], vec![0.0; 6]),
            &meta(),
            2,
        )
        .unwrap_err()
        .to_string();
        assert!(e.len() < 200, "{} bytes", e.len());
    }

    #[test]
    fn raw_encoding_of_floats_and_bytes() {
        let t = Tensor {
            name: "label".into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            data: Data::Bytes(vec![b"ab".to_vec(), vec![]]),
        };
        assert_eq!(t.raw(), vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        let f = Tensor {
            data: Data::F32(vec![1.0]),
            ..t
        };
        assert_eq!(f.raw(), 1.0f32.to_le_bytes());
    }
}
