"""Generate the Parquet files of the embedpipe sample corpus.

Usage (from the repository root):

    .venv/bin/python examples/corpus_tools/make_parquet.py

Writes:
    examples/corpus/ops/index-tuning.parquet   (English, 6 rows)
    examples/corpus/zh/concepts.parquet        (Simplified Chinese, 6 rows)

Schema (all columns are non-null strings): id, title, text, category.
The output is deterministic, so re-running the script is safe.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
    ]
)

INDEX_TUNING_EN = [
    (
        "tune-001",
        "When to skip the ANN index",
        "For collections below a few hundred thousand vectors, a brute-force flat scan is often fast enough "
        "and is always exact. Building an approximate index adds build time, tuning parameters and a small "
        "loss of recall. Measure query latency with a flat scan first and add an index only when it misses "
        "your latency target.",
        "indexing",
    ),
    (
        "tune-002",
        "Choosing the number of IVF partitions",
        "IVF splits the vectors into partitions with k-means. A common starting point is a partition count "
        "near the square root of the number of rows, for example about 1,000 partitions for one million "
        "vectors. Too few partitions make each probe scan many vectors; too many leave partitions sparse and "
        "force more probes to reach the same recall.",
        "indexing",
    ),
    (
        "tune-003",
        "nprobes: trading recall for latency",
        "At query time, nprobes sets how many IVF partitions are scanned. Recall rises quickly "
        "over the first few percent of partitions and then flattens. Sweep values such as 10, "
        "20, 50 and 100, record recall@10 against exact search and p95 latency, and choose the "
        "smallest value that meets the recall target.",
        "querying",
    ),
    (
        "tune-004",
        "Product quantization sub-vectors",
        "With PQ, each vector is split into sub-vectors that are encoded with one byte each. For a "
        "384-dimensional model, 48 sub-vectors of 8 dimensions compress a 1,536-byte float32 vector to 48 "
        "bytes. More sub-vectors improve accuracy and use more memory. The dimension should divide evenly by "
        "the number of sub-vectors.",
        "indexing",
    ),
    (
        "tune-005",
        "Refining PQ results with full vectors",
        "Distances computed from PQ codes are approximate. A refine step fetches the original vectors for a "
        "multiple of k candidates, recomputes exact distances and re-sorts them. In LanceDB this is the "
        "refine factor; values between 5 and 20 often recover most of the recall lost to quantization at a "
        "modest latency cost.",
        "querying",
    ),
    (
        "tune-006",
        "Rebuilding indexes after large ingestions",
        "Rows appended after an index was built may be searched by a slower flat scan or not reflected in "
        "the index partitions until it is updated. After a large ingestion, or when the data distribution "
        "has shifted, rebuild or optimize the index and re-run the recall benchmark to confirm the settings "
        "still hold.",
        "operations",
    ),
]

CONCEPTS_ZH = [
    (
        "zh-concept-001",
        "多语言嵌入",
        "多语言模型把上百种语言映射到同一个向量空间。在对齐良好的空间里，"
        "「火车站在哪里？」与英文的同义问句会得到相近的向量，"
        "因此可以用中文查询检索英文文档。构建方法主要有两种：在多语言预训练模型上做对比学习微调；"
        "或者用知识蒸馏，让学生模型对译文的编码去逼近教师模型对英文原句的编码。",
        "多语言",
    ),
    (
        "zh-concept-002",
        "分词与词元",
        "模型看到的不是汉字，而是分词器输出的词元编号。BERT 使用 WordPiece，"
        "GPT 系列使用字节级 BPE，T5 和 XLM-RoBERTa 使用 SentencePiece。"
        "以英文为主的词表会把中文切成单字，甚至产生未知词元；"
        "多语言词表则能把常见词语合并为一个词元，效率和语义都更好。",
        "基础",
    ),
    (
        "zh-concept-003",
        "评估指标：MRR",
        "平均倒数排名只看第一条相关结果的位置：排在第 1 位得 1 分，"
        "第 2 位得 0.5 分，第 4 位得 0.25 分，截断范围内找不到则得 0 分，"
        "最后对所有查询取平均。"
        "它适合「用户只需要一个好答案」的场景，例如问答和导航式搜索。",
        "评估",
    ),
    (
        "zh-concept-004",
        "评估指标：nDCG",
        "nDCG 支持分级相关性，并奖励把最相关的结果排在前面。"
        "DCG 把每条结果的增益除以其位置的对数后求和，再除以理想排序下的 DCG，"
        "得到 0 到 1 之间的数值。"
        "nDCG@10 是 BEIR 和 MTEB 检索基准的主要指标。",
        "评估",
    ),
    (
        "zh-concept-005",
        "漂移监控",
        "嵌入系统上线后，效果可能悄悄变差。建议每天记录几项简单统计：文本块数量与平均长度、"
        "被截断的比例、向量范数均值、线上查询最高相似度的分布；"
        "每周在固定的标注集上跑一次 recall@k 和 MRR。数字突然变化，往往意味着数据、"
        "模型或处理流程发生了改变。",
        "运维",
    ),
    (
        "zh-concept-006",
        "交叉编码器重排序",
        "双塔（bi-encoder）模型分别编码查询和文档，适合大规模召回；"
        "交叉编码器把查询和文档拼在一起输入，直接输出相关性分数，准确率更高，但每个查询—文档对都要算一次。"
        "常见做法是先用向量检索取回 50 到 100 个候选，再用交叉编码器重排，"
        "只把最好的几条交给用户或大语言模型。",
        "检索",
    ),
]


def write(rows: list[tuple[str, str, str, str]], path: Path) -> None:
    ids = [r[0] for r in rows]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate ids in {path}")
    columns = list(zip(*rows, strict=True))
    table = pa.Table.from_arrays([pa.array(c, type=pa.string()) for c in columns], schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    print(f"wrote {path} ({table.num_rows} rows)")


def main() -> None:
    write(INDEX_TUNING_EN, CORPUS / "ops" / "index-tuning.parquet")
    write(CONCEPTS_ZH, CORPUS / "zh" / "concepts.parquet")


if __name__ == "__main__":
    main()
