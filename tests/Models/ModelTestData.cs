using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

/// <summary>Tiny configurations and batches shared by the model tests.</summary>
internal static class ModelTestData
{
    /// <summary>A 2-layer, 32-wide model over the synthetic vocabulary (60 regular ids + 4 specials, padded to 64).</summary>
    internal static TransformerConfig Tiny(string preset = "bert-tiny") => TransformerConfig.Preset(preset) with
    {
        HiddenSize = 32,
        NumHeads = 4,
        IntermediateSize = 64,
        MaxSequenceLength = 32,
        VocabSize = 64,
    };

    internal static readonly TokenVocabulary Vocabulary = new(60);

    /// <summary>Random ids in [0, 60) as Int64 [b, t], with the last <paramref name="padLast"/> positions of sample 0 padded.</summary>
    internal static Batch RandomBatch(long b, long t, int padLast = 0, Tensor? labels = null)
    {
        Tensor ids = torch.randint(0, 60, new[] { b, t }, dtype: ScalarType.Int64);
        Tensor mask = torch.ones(b, t, dtype: ScalarType.Int64);
        if (padLast > 0)
        {
            ids[0, TensorIndex.Slice(t - padLast)] = Vocabulary.PadId;
            mask[0, TensorIndex.Slice(t - padLast)] = 0;
        }

        var tensors = new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask };
        if (labels is not null)
        {
            tensors["labels"] = labels;
        }

        return new Batch(tensors);
    }
}
