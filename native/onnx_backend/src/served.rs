//! What this backend serves, as pure functions: the settings it reads from a model's config, and the turn
//! from a batch's logits to the served outputs (probabilities, confidence, label).
//!
//! The contract is the Python backend's (`workers/triton/backend_model.py` and `prediction_from_logits` in
//! `workers/triton/variant_engine.py`): softmax in float32 after subtracting the row's maximum, the label is
//! the first index of the largest probability, the confidence that probability. Outputs are named
//! `PROBS`, `CONFIDENCE`, `LABEL`, with `_<task>` appended per task for a fused multi-task model, whose graph
//! has one output `logits_<task>` per task. Nothing here touches Triton or ONNX Runtime.

use serde_json::Value;
use std::ffi::CStr;
use std::path::{Path, PathBuf};

pub const INPUT_NAME: &str = "IMAGE";
/// [`INPUT_NAME`] as Triton's C API takes it.
pub const INPUT: &CStr = c"IMAGE";
pub const OUTPUT_PROBS: &str = "PROBS";
pub const OUTPUT_CONFIDENCE: &str = "CONFIDENCE";
pub const OUTPUT_LABEL: &str = "LABEL";
pub const ONNX_FILE: &str = "model.onnx";

/// A model's settings, from its Triton config (`parameters` as `workers/triton/repository.py` renders them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub variant: String,
    pub graph: PathBuf,
    pub cpu_threads: usize,
    /// Fused model tasks in the order of the graph's outputs; empty for a single-task variant.
    pub tasks: Vec<String>,
    /// Dims of one input row (the config's `input[IMAGE].dims`, without the batch dimension).
    pub row_shape: Vec<i64>,
}

impl Settings {
    /// Elements in one input row.
    pub fn row_len(&self) -> usize {
        self.row_shape.iter().product::<i64>() as usize
    }
}

/// Parse the config JSON Triton hands the backend; `model_dir` is `<repository>/<model>`.
pub fn settings(config_json: &str, model_dir: &Path, version: u64) -> Result<Settings, String> {
    let config: Value = serde_json::from_str(config_json).map_err(|e| format!("model config is not JSON: {e}"))?;
    let parameter = |key: &str| -> Option<String> {
        config.get("parameters")?.get(key)?.get("string_value")?.as_str().map(str::to_owned)
    };
    let weights_dir = parameter("weights_dir").unwrap_or_else(|| ".".to_owned());
    let base = Path::new(&weights_dir);
    let dir = if base.is_absolute() { base.to_path_buf() } else { model_dir.join(version.to_string()).join(base) };
    let cpu_threads = match parameter("cpu_threads") {
        None => 1,
        Some(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("parameters.cpu_threads: must be an integer >= 1, got {text:?}")),
        },
    };
    let tasks: Vec<String> = parameter("tasks")
        .map(|text| text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let inputs = config.get("input").and_then(Value::as_array).ok_or("model config has no input")?;
    let input = inputs
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(INPUT_NAME))
        .ok_or_else(|| format!("model config has no input named {INPUT_NAME}"))?;
    if input.get("data_type").and_then(Value::as_str) != Some("TYPE_FP32") {
        return Err(format!("input {INPUT_NAME}: data_type must be TYPE_FP32"));
    }
    let row_shape = input
        .get("dims")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("input {INPUT_NAME} has no dims"))?
        .iter()
        .map(dim)
        .collect::<Option<Vec<i64>>>()
        .filter(|dims| !dims.is_empty() && dims.iter().all(|d| *d >= 1))
        .ok_or_else(|| format!("input {INPUT_NAME}: dims must be positive integers"))?;
    Ok(Settings {
        variant: parameter("variant").unwrap_or_default(),
        graph: dir.join(ONNX_FILE),
        cpu_threads,
        tasks,
        row_shape,
    })
}

/// A dim as protobuf JSON writes an int64: a number or a decimal string.
fn dim(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str()?.parse().ok())
}

/// `name` for a single-task model, `name_task` for a task of a fused one.
pub fn output_name(name: &str, task: &str) -> String {
    if task.is_empty() {
        name.to_owned()
    } else {
        format!("{name}_{task}")
    }
}

/// Served outputs of `rows` rows: probabilities `(rows, classes)`, confidence and label `(rows,)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub classes: usize,
    pub probs: Vec<f32>,
    pub confidence: Vec<f32>,
    pub label: Vec<i64>,
}

/// Softmax, confidence and label of row-major `(rows, classes)` logits.
pub fn predict(logits: &[f32], classes: usize) -> Result<Prediction, String> {
    if classes < 2 || !logits.len().is_multiple_of(classes) {
        return Err(format!("logits of {} values do not form rows of {classes} >= 2 classes", logits.len()));
    }
    let rows = logits.len() / classes;
    let mut probs = Vec::with_capacity(logits.len());
    let mut confidence = Vec::with_capacity(rows);
    let mut label = Vec::with_capacity(rows);
    for row in logits.chunks_exact(classes) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = probs.len();
        probs.extend(row.iter().map(|v| (v - max).exp()));
        let sum: f32 = probs[start..].iter().sum();
        for p in &mut probs[start..] {
            *p /= sum;
        }
        let mut best = 0usize;
        for index in 1..classes {
            if probs[start + index] > probs[start + best] {
                best = index;
            }
        }
        confidence.push(probs[start + best]);
        label.push(best as i64);
    }
    Ok(Prediction { classes, probs, confidence, label })
}

/// The bytes of one request's outputs (rows `start..start + rows` of `prediction`), in the order
/// `PROBS`, `CONFIDENCE`, `LABEL`, as (name suffix-free kind, shape, little-endian bytes).
pub fn request_slices(
    prediction: &Prediction,
    start: usize,
    rows: usize,
) -> [(&'static str, u32, [i64; 2], Vec<u8>); 3] {
    let c = prediction.classes;
    let probs = prediction.probs[start * c..(start + rows) * c].iter().flat_map(|v| v.to_le_bytes()).collect();
    let confidence = prediction.confidence[start..start + rows].iter().flat_map(|v| v.to_le_bytes()).collect();
    let label = prediction.label[start..start + rows].iter().flat_map(|v| v.to_le_bytes()).collect();
    [
        (OUTPUT_PROBS, crate::triton::TYPE_FP32, [rows as i64, c as i64], probs),
        (OUTPUT_CONFIDENCE, crate::triton::TYPE_FP32, [rows as i64, 1], confidence),
        (OUTPUT_LABEL, crate::triton::TYPE_INT64, [rows as i64, 1], label),
    ]
}

/// The rows of one request's input, checked against the model: FP32, shape `(n, *row_shape)`, n >= 1.
pub fn input_rows(datatype: u32, shape: &[i64], bytes: &[u8], settings: &Settings) -> Result<Vec<f32>, String> {
    if datatype != crate::triton::TYPE_FP32 {
        return Err(format!("input {INPUT_NAME}: expected FP32 data"));
    }
    if shape.len() != settings.row_shape.len() + 1 || shape[1..] != settings.row_shape[..] || shape[0] < 1 {
        return Err(format!("input {INPUT_NAME}: expected shape [n, {:?}], got {shape:?}", settings.row_shape));
    }
    let expected = shape[0] as usize * settings.row_len() * 4;
    if bytes.len() != expected {
        return Err(format!("input {INPUT_NAME}: {} bytes for shape {shape:?} (expected {expected})", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(params: &str) -> String {
        format!(
            r#"{{"name":"m","input":[{{"name":"IMAGE","data_type":"TYPE_FP32","dims":["8","8"]}}],
                "parameters":{{{params}}}}}"#
        )
    }

    #[test]
    fn settings_resolve_relative_weights_under_the_version_directory() {
        let s = settings(
            &config(r#""weights_dir":{"string_value":"."},"variant":{"string_value":"mlp"}"#),
            Path::new("/r/m"),
            1,
        )
        .unwrap();
        assert_eq!(s.graph, PathBuf::from("/r/m/1/./model.onnx"));
        assert_eq!((s.cpu_threads, s.row_shape.clone(), s.variant.as_str()), (1, vec![8, 8], "mlp"));
        let s = settings(&config(r#""weights_dir":{"string_value":"/cache/v"},"cpu_threads":{"string_value":"2"},"tasks":{"string_value":"a,b"}"#), Path::new("/r/m"), 3).unwrap();
        assert_eq!(
            (s.graph, s.cpu_threads, s.tasks),
            (PathBuf::from("/cache/v/model.onnx"), 2, vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn the_c_name_of_the_input_is_its_name() {
        assert_eq!(INPUT.to_str(), Ok(INPUT_NAME));
    }

    #[test]
    fn settings_name_the_bad_field() {
        let err = settings(&config(r#""cpu_threads":{"string_value":"0"}"#), Path::new("/r"), 1).unwrap_err();
        assert!(err.contains("cpu_threads"), "{err}");
        let err =
            settings(r#"{"input":[{"name":"X","data_type":"TYPE_FP32","dims":[4]}]}"#, Path::new("/r"), 1).unwrap_err();
        assert!(err.contains("IMAGE"), "{err}");
    }

    #[test]
    fn prediction_is_a_softmax_with_the_first_maximum_as_label() {
        let p = predict(&[1.0, 3.0, 3.0, 0.0, 0.0, 0.0], 3).unwrap();
        let e = [(-2f32).exp(), 1.0, 1.0];
        let s: f32 = e.iter().sum();
        assert_eq!(p.probs[..3], [e[0] / s, e[1] / s, e[2] / s]);
        assert_eq!(p.label, vec![1, 0]);
        assert_eq!(p.confidence, vec![1.0 / s, 1.0 / 3.0]);
        assert!(predict(&[1.0, 2.0, 3.0], 2).is_err());
    }

    #[test]
    fn request_slices_cut_rows_out_of_the_batch() {
        let p = predict(&[0.0, 1.0, 5.0, 0.0, 0.0, 9.0], 2).unwrap();
        let [probs, confidence, label] = request_slices(&p, 1, 2);
        assert_eq!((probs.0, probs.2), (OUTPUT_PROBS, [2, 2]));
        assert_eq!(probs.3.len(), 16);
        assert_eq!(confidence.2, [2, 1]);
        assert_eq!(label.3, [0i64, 1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }

    #[test]
    fn input_rows_check_type_shape_and_size() {
        let s = Settings { variant: "v".into(), graph: "/g".into(), cpu_threads: 1, tasks: vec![], row_shape: vec![2] };
        let bytes: Vec<u8> = [1f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(input_rows(crate::triton::TYPE_FP32, &[2, 2], &bytes, &s).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert!(input_rows(crate::triton::TYPE_FP32, &[2, 3], &bytes, &s).unwrap_err().contains("shape"));
        assert!(input_rows(crate::triton::TYPE_FP32, &[1, 2], &bytes, &s).unwrap_err().contains("bytes"));
        assert!(input_rows(crate::triton::TYPE_INT64, &[2, 2], &bytes, &s).unwrap_err().contains("FP32"));
    }
}
