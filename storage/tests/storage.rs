//! Storage against a real S3 server (Garage on loopback) and a local directory.

use std::time::{Duration, Instant};

use stylefarm_storage::{Limit, ObjectUrl, S3Options, Storage, StorageError};
use stylefarm_testkit::garage::Garage;

/// Any object a test reads back.
const ANY: Limit = Limit::new("a test object", 1 << 30);

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Put, get, exists, content-addressed inputs: the same on both backends.
async fn round_trips(storage: &Storage, root: &ObjectUrl) {
    let url = root
        .join("batches/b1/jobs/j1/attempt-001/out.png")
        .expect("join");
    assert!(!storage.exists(&url).await.expect("exists"));
    storage.put(&url, b"first".to_vec()).await.expect("put");
    storage
        .put(&url, b"second".to_vec())
        .await
        .expect("overwrite");
    assert!(storage.exists(&url).await.expect("exists"));
    assert_eq!(storage.get(&url, &ANY).await.expect("get"), b"second");

    let bytes = pattern(1000, 7);
    let (input, uploaded) = storage.put_input(root, bytes.clone()).await.expect("input");
    assert!(uploaded);
    assert!(input
        .uri
        .ends_with(&format!("inputs/sha256/{}", input.sha256)));
    let (again, uploaded) = storage
        .put_input(root, bytes.clone())
        .await
        .expect("input again");
    assert!(!uploaded, "an input already present is not uploaded again");
    assert_eq!(again, input);
    assert_eq!(storage.get_input(&input).await.expect("get input"), bytes);
    let mut wrong = input.clone();
    wrong.sha256 = "0".repeat(64);
    assert!(matches!(
        storage.get_input(&wrong).await,
        Err(StorageError::Corrupt { .. })
    ));

    let missing = root.join("nothing/here.png").expect("join");
    let err = storage.get(&missing, &ANY).await.expect_err("missing");
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("nothing/here.png"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_put_get_exists_multipart_and_errors() {
    let garage = Garage::start();
    let storage = Storage::new(garage.options(Duration::from_secs(30)));
    let root = garage.root("farm");
    round_trips(&storage, &root).await;

    // 40 MiB goes up in 8 MiB parts and comes back intact.
    let big = pattern(40 << 20, 3);
    let url = root.join("big/checkpoint.safetensors").expect("join");
    storage.put(&url, big.clone()).await.expect("multipart put");
    assert_eq!(storage.get(&url, &ANY).await.expect("get").len(), big.len());
    assert!(storage.get(&url, &ANY).await.expect("get") == big);
    // It went up in parts: S3 gives a multipart object the ETag `HASH-PARTS`.
    let etag = head_etag(&garage, &url).await;
    assert!(etag.ends_with("-5\""), "40 MiB in 8 MiB parts: ETag {etag}");
    let small = root.join("small").expect("join");
    storage.put(&small, vec![1; 1000]).await.expect("put");
    let etag = head_etag(&garage, &small).await;
    assert!(
        !etag.contains('-'),
        "a small object goes up whole: ETag {etag}"
    );

    // A bucket that does not exist and refused credentials fail at once and say so.
    let nobucket = ObjectUrl::parse("s3://no-such-bucket-here/x").expect("url");
    let started = Instant::now();
    let err = storage
        .put(&nobucket, b"x".to_vec())
        .await
        .expect_err("no bucket");
    assert!(
        matches!(&err, StorageError::NoSuchBucket { bucket, .. } if bucket == "no-such-bucket-here"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "s3://no-such-bucket-here/x: bucket no-such-bucket-here does not exist"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "permanent errors are not retried"
    );

    let mut bad = garage.options(Duration::from_secs(30));
    bad.secret_key = Some("0".repeat(64));
    let wrong = Storage::new(bad);
    let started = Instant::now();
    let err = wrong
        .get(&root.join("x").expect("join"), &ANY)
        .await
        .expect_err("bad secret");
    assert!(matches!(err, StorageError::Denied { .. }), "{err}");
    assert!(err.to_string().contains(&garage.bucket), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "permanent errors are not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outages_are_retried_until_the_server_is_back_or_the_deadline() {
    let mut garage = Garage::start();
    let root = garage.root("outage");
    let storage = Storage::new(garage.options(Duration::from_secs(60)));
    let url = root.join("during-outage.bin").expect("join");
    garage.stop();
    let put = tokio::spawn({
        let storage = Storage::new(garage.options(Duration::from_secs(60)));
        let url = url.clone();
        async move { storage.put(&url, b"made it".to_vec()).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!put.is_finished(), "the put waits for the server");
    garage.resume();
    put.await
        .expect("task")
        .expect("the put succeeds once the server is back");
    assert_eq!(storage.get(&url, &ANY).await.expect("get"), b"made it");

    garage.stop();
    let short = Storage::new(garage.options(Duration::from_secs(2)));
    let err = short.get(&url, &ANY).await.expect_err("still down");
    assert!(
        matches!(err, StorageError::Unavailable { attempts, .. } if attempts > 1),
        "{err}"
    );
    assert!(err.to_string().contains("during-outage.bin"), "{err}");
}

#[tokio::test]
async fn local_directory_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = ObjectUrl::parse(&dir.path().display().to_string()).expect("path");
    let storage = Storage::new(S3Options::default());
    round_trips(&storage, &root).await;
    assert!(root.join("../escape").is_err());
}

/// The ETag of an object in Garage, as S3's HeadObject gives it.
async fn head_etag(garage: &Garage, url: &ObjectUrl) -> String {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let ObjectUrl::S3 { bucket, key } = url else {
        panic!("not an S3 url: {url}");
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("garage"))
        .endpoint_url(&garage.endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &garage.access_key,
            &garage.secret_key,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("head")
        .e_tag()
        .expect("an ETag")
        .to_owned()
}

/// AWS's own answer for a bucket that does not exist (404, code NoSuchBucket, in AWS's
/// XML) is its own error, named with the bucket, and not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_as_such() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let served = std::thread::spawn(move || {
        let mut answered = 0;
        for stream in listener.incoming().take(2) {
            let mut s = stream.expect("accept");
            let mut req = [0u8; 8192];
            let _ = s.read(&mut req);
            let body =
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
                <Message>The specified bucket does not exist</Message>\
                <BucketName>gone</BucketName><RequestId>1</RequestId></Error>";
            let head = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body.as_bytes());
            answered += 1;
        }
        answered
    });
    let storage = Storage::new(S3Options {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key: Some("AKID".into()),
        secret_key: Some("SECRET".into()),
        ..S3Options::default()
    });
    let url = ObjectUrl::parse("s3://gone/inputs/x").expect("url");
    let err = storage.get(&url, &ANY).await.expect_err("no bucket");
    assert!(
        matches!(&err, StorageError::NoSuchBucket { bucket, .. } if bucket == "gone"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "s3://gone/inputs/x: bucket gone does not exist"
    );
    let err = storage
        .put(&url, b"x".to_vec())
        .await
        .expect_err("no bucket");
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err:?}");
    assert_eq!(
        served.join().expect("server"),
        2,
        "one request each, no retries"
    );
}

/// A read is refused once the object is over its limit: from the stated length over
/// S3, and from the file's size locally; a local read never follows a folder or device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_over_their_limit_are_refused_and_inputs_are_hashed_as_they_stream() {
    let garage = Garage::start();
    let storage = Storage::new(garage.options(Duration::from_secs(30)));
    let dir = tempfile::tempdir().expect("tempdir");
    let local = ObjectUrl::File(dir.path().to_owned());
    for root in [garage.root("limits"), local] {
        let url = root.join("obj").expect("join");
        storage.put(&url, vec![7u8; 1000]).await.expect("put");
        let small = Limit::new("a thing", 999);
        let err = storage.get(&url, &small).await.expect_err("over the limit");
        assert!(
            matches!(err, StorageError::TooLarge { limit: 999, .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("larger than the 999 bytes accepted for a thing"),
            "{err}"
        );
        let exact = Limit::new("a thing", 1000);
        assert_eq!(
            storage.get(&url, &exact).await.expect("at the limit").len(),
            1000
        );

        let (input, _) = storage
            .put_input(&root, vec![1u8; 70_000])
            .await
            .expect("put input");
        assert_eq!(
            storage.get_input(&input).await.expect("get input").len(),
            70_000
        );
        let mut wrong = input.clone();
        wrong.sha256 = "0".repeat(64);
        assert!(matches!(
            storage.get_input(&wrong).await,
            Err(StorageError::Corrupt { .. })
        ));
    }
    let folder = ObjectUrl::File(dir.path().join("inputs"));
    let err = storage
        .get(&folder, &ANY)
        .await
        .expect_err("a folder is not an object");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = storage
        .get(&ObjectUrl::File("/dev/zero".into()), &ANY)
        .await
        .expect_err("a device is not an object");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
