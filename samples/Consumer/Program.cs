// A user's program on the ComposerSharp package: a tiny BERT masked-language model on synthetic tokens, trained
// for a few batches under amp_bf16 with LowPrecisionLayerNorm. Exits 0 when training ran every batch, the algorithm
// replaced the LayerNorms and the last training loss is finite; 1 otherwise (with the reason on stderr).
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Training;

const int batches = 4;
var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 128, SequenceLength = 32, RegularVocabSize = 128, Seed = 1 });
var loader = new DataLoader<long[]>(data, batchSize: 16, new MlmCollator(data.Vocabulary, new MlmCollatorOptions { Seed = 1 }),
    shuffle: true, dropLast: true, seed: 1);
TransformerConfig config = TransformerConfig.Preset("bert-tiny") with { VocabSize = data.Vocabulary.Size, MaxSequenceLength = 32 };

using var model = new BertForMaskedLM(config);
var lowPrecisionLayerNorm = new LowPrecisionLayerNorm();
var options = new TrainerOptions { MaxDuration = Time.FromBatch(batches), Precision = Precision.AmpBf16, Device = "cpu", ProgressBar = false };
using var trainer = new Trainer(model, options, trainDataloader: loader, algorithms: new[] { lowPrecisionLayerNorm });
trainer.Fit();

long trained = trainer.State.Timestamp.Batch;
int replaced = lowPrecisionLayerNorm.ModulesReplaced ?? 0;
double loss = trainer.State.Metrics.TryGetValue("loss/train/total", out double l) ? l : double.NaN;
Console.WriteLine($"consumer: trained {trained} batches, LowPrecisionLayerNorm replaced {replaced} LayerNorm modules, last loss {loss:F4}");
if (trained != batches || replaced == 0 || !double.IsFinite(loss))
{
    Console.Error.WriteLine($"consumer: FAILED (expected {batches} batches, at least one replaced LayerNorm and a finite loss)");
    return 1;
}

return 0;
