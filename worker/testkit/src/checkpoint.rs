//! Checkpoints edited the way a damaged or hostile one would be.

/// A checkpoint's tensors and metadata, rebuilt after `edit` (a checkpoint is data a
/// worker reads back from storage: it may have been written by anyone holding the lease).
pub fn tampered(
    bytes: &[u8],
    edit: impl FnOnce(
        &mut std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)>,
        &mut serde_json::Value,
    ),
) -> Vec<u8> {
    use safetensors::{tensor::TensorView, Dtype, SafeTensors};
    const KEY: &str = "stylefarm.checkpoint";
    let (_, header) = SafeTensors::read_metadata(bytes).expect("header");
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(KEY))
        .expect("meta")
        .clone();
    let mut meta: serde_json::Value = serde_json::from_str(&json).expect("json");
    let st = SafeTensors::deserialize(bytes).expect("tensors");
    let mut raw: std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut raw, &mut meta);
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(k, (shape, data))| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).expect("view"),
            )
        })
        .collect();
    let info = std::collections::HashMap::from([(KEY.to_owned(), meta.to_string())]);
    safetensors::serialize(views, &Some(info)).expect("serialize")
}
