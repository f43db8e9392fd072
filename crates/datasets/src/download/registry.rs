//! The data sets `cargo xtask download` knows: their files, checksums and mirrors.
//!
//! Checksums of the compressed files are the MD5 sums that torchvision's dataset classes
//! publish (CIFAR-10's binary archive: the sum on the data set's own page). For the IDX sets the
//! SHA-256 of the decompressed content is also listed, so that copies that were recompressed by
//! a packager (Debian's `dataset-fashion-mnist` is) still verify when imported with `--from`.
//! No checksum is published for the UCI HAR zip: it is downloaded unverified (with a warning)
//! and its SHA-256 is recorded in `SHA256SUMS` for later runs.

use super::{DatasetSource, RemoteFile, Unpack};

/// Every data set the downloader knows, with its standard location first among the mirrors.
pub fn registry() -> Vec<DatasetSource> {
    vec![mnist(), fashion_mnist(), cifar10(), svhn(), har()]
}

/// Looks a data set up by name or alias (case-insensitive).
pub fn find_dataset(name: &str) -> Option<DatasetSource> {
    let n = name.trim().to_ascii_lowercase();
    registry().into_iter().find(|d| d.name == n || d.aliases.contains(&n))
}

fn idx(name: &str, md5: &str, gunzipped_sha256: &str) -> RemoteFile {
    RemoteFile::new(name).md5(md5).gunzipped_sha256(gunzipped_sha256)
}

fn mnist() -> DatasetSource {
    DatasetSource {
        name: "mnist".into(),
        aliases: vec![],
        description: "MNIST handwritten digits, IDX files (.gz)".into(),
        files: vec![
            idx(
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            ),
            idx(
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            ),
            idx(
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            ),
            idx(
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ),
        ],
        mirrors: vec![
            "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
            "https://storage.googleapis.com/cvdf-datasets/mnist/".into(),
            "http://yann.lecun.com/exdb/mnist/".into(),
        ],
    }
}

fn fashion_mnist() -> DatasetSource {
    DatasetSource {
        name: "fashion-mnist".into(),
        aliases: vec!["fashion_mnist".into(), "fashionmnist".into()],
        description: "Fashion-MNIST (Zalando), IDX files (.gz)".into(),
        files: vec![
            idx(
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            idx(
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            idx(
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            idx(
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ],
        mirrors: vec![
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into(),
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/".into(),
        ],
    }
}

fn cifar10() -> DatasetSource {
    DatasetSource {
        name: "cifar10".into(),
        aliases: vec!["cifar-10".into(), "cifar".into()],
        description: "CIFAR-10, binary version (unpacked to cifar-10-batches-bin/)".into(),
        files: vec![RemoteFile::new("cifar-10-binary.tar.gz")
            .md5("c32a1d4ab5d03f1284b67883e8d87530")
            .unpack(Unpack::TarGz)],
        mirrors: vec!["https://www.cs.toronto.edu/~kriz/".into(), "https://cave.cs.toronto.edu/kriz/".into()],
    }
}

fn svhn() -> DatasetSource {
    DatasetSource {
        name: "svhn".into(),
        aliases: vec![],
        description: "SVHN cropped digits, train and test (MATLAB .mat files)".into(),
        files: vec![
            RemoteFile::new("train_32x32.mat").md5("e26dedcc434d2e4c54c9b2d4a06d8373"),
            RemoteFile::new("test_32x32.mat").md5("eb5a983be6a315427106f1b164d9cef3"),
        ],
        mirrors: vec![
            "http://ufldl.stanford.edu/housenumbers/".into(),
            "https://ufldl.stanford.edu/housenumbers/".into(),
        ],
    }
}

fn har() -> DatasetSource {
    DatasetSource {
        name: "har".into(),
        aliases: vec!["uci-har".into(), "uci_har".into()],
        description: "UCI Human Activity Recognition (smartphones), zip (unpacked to UCI HAR Dataset/)".into(),
        // No published checksum: verified against the SHA-256 recorded on first download.
        files: vec![RemoteFile::new("UCI HAR Dataset.zip").unpack(Unpack::Zip)],
        mirrors: vec![
            "https://archive.ics.uci.edu/ml/machine-learning-databases/00240/".into(),
            "https://d396qusza40orc.cloudfront.net/getdata%2Fprojectfiles%2F".into(),
        ],
    }
}
