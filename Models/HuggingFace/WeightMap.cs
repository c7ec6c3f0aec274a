namespace ComposerSharp.Models.HuggingFace;

/// <summary>How one Hugging Face tensor is made from (and written back into) one of our state-dict tensors.</summary>
internal enum WeightTransform
{
    /// <summary>Same values, same shape.</summary>
    Copy,

    /// <summary>The transpose of a 2-D weight: GPT-2's <c>Conv1D</c> stores [in, out] where <c>Linear</c> stores [out, in].</summary>
    Transpose,

    /// <summary>Rows [Part·n, (Part+1)·n) of a tensor of Parts·n rows: BERT's separate query, key and value of our fused <c>qkv</c>.</summary>
    Part,
}

/// <summary>One Hugging Face tensor: its name, the state-dict key of ours it comes from, and the transform.</summary>
internal sealed record WeightEntry(string Ours, string HuggingFace, WeightTransform Transform, int Part = 0, int Parts = 1);

/// <summary>
/// The tensor names of Hugging Face <c>transformers</c>' <c>BertForMaskedLM</c>, <c>BertForSequenceClassification</c>
/// (modeling_bert.py) and <c>GPT2LMHeadModel</c> (modeling_gpt2.py), each mapped to our state-dict key. Tied weights
/// (the MLM decoder and GPT-2's <c>lm_head</c>, both the word embedding) are not listed: <c>save_pretrained</c> drops them too.
/// </summary>
internal static class WeightMap
{
    /// <summary>The map of a BERT model of <paramref name="layers"/> blocks with the given head.</summary>
    public static IReadOnlyList<WeightEntry> Bert(int layers, bool tokenTypes, HuggingFaceArchitecture head)
    {
        var map = new List<WeightEntry>
        {
            new("backbone.wte.weight", "bert.embeddings.word_embeddings.weight", WeightTransform.Copy),
            new("backbone.wpe.weight", "bert.embeddings.position_embeddings.weight", WeightTransform.Copy),
        };
        if (tokenTypes)
        {
            map.Add(new("backbone.wtt.weight", "bert.embeddings.token_type_embeddings.weight", WeightTransform.Copy));
        }

        Pair(map, "backbone.emb_ln", "bert.embeddings.LayerNorm");
        for (int i = 0; i < layers; i++)
        {
            string ours = $"backbone.layers.{i}", hf = $"bert.encoder.layer.{i}";
            string[] qkv = { "query", "key", "value" };
            for (int p = 0; p < 3; p++)
            {
                map.Add(new($"{ours}.attn.qkv.weight", $"{hf}.attention.self.{qkv[p]}.weight", WeightTransform.Part, p, 3));
                map.Add(new($"{ours}.attn.qkv.bias", $"{hf}.attention.self.{qkv[p]}.bias", WeightTransform.Part, p, 3));
            }

            Pair(map, $"{ours}.attn.out_proj", $"{hf}.attention.output.dense");
            Pair(map, $"{ours}.ln_1", $"{hf}.attention.output.LayerNorm");
            Pair(map, $"{ours}.mlp.fc_in", $"{hf}.intermediate.dense");
            Pair(map, $"{ours}.mlp.fc_out", $"{hf}.output.dense");
            Pair(map, $"{ours}.ln_2", $"{hf}.output.LayerNorm");
        }

        if (head == HuggingFaceArchitecture.BertForMaskedLM)
        {
            Pair(map, "mlm_transform", "cls.predictions.transform.dense");
            Pair(map, "mlm_ln", "cls.predictions.transform.LayerNorm");
            map.Add(new("mlm_bias", "cls.predictions.bias", WeightTransform.Copy));
        }
        else
        {
            Pair(map, "pooler", "bert.pooler.dense");
            Pair(map, "classifier", "classifier");
        }

        return map;
    }

    /// <summary>The map of a GPT-2 model of <paramref name="layers"/> blocks.</summary>
    public static IReadOnlyList<WeightEntry> Gpt2(int layers)
    {
        var map = new List<WeightEntry>
        {
            new("backbone.wte.weight", "transformer.wte.weight", WeightTransform.Copy),
            new("backbone.wpe.weight", "transformer.wpe.weight", WeightTransform.Copy),
        };
        for (int i = 0; i < layers; i++)
        {
            string ours = $"backbone.layers.{i}", hf = $"transformer.h.{i}";
            Pair(map, $"{ours}.ln_1", $"{hf}.ln_1");
            Conv1D(map, $"{ours}.attn.qkv", $"{hf}.attn.c_attn");
            Conv1D(map, $"{ours}.attn.out_proj", $"{hf}.attn.c_proj");
            Pair(map, $"{ours}.ln_2", $"{hf}.ln_2");
            Conv1D(map, $"{ours}.mlp.fc_in", $"{hf}.mlp.c_fc");
            Conv1D(map, $"{ours}.mlp.fc_out", $"{hf}.mlp.c_proj");
        }

        Pair(map, "backbone.ln_f", "transformer.ln_f");
        return map;
    }

    /// <summary>
    /// The name a Hugging Face file uses for <paramref name="name"/> once the loader's aliases are undone: the base
    /// model's prefix (<c>bert.</c>, <c>transformer.</c>) that files saved from <c>BertModel</c>/<c>GPT2Model</c> lack,
    /// and TensorFlow-era LayerNorm names <c>gamma</c>/<c>beta</c> (as <c>transformers</c>' own key fix-up).
    /// </summary>
    public static string Canonical(string name, bool gpt2)
    {
        string key = name;
        if (key.EndsWith(".gamma", StringComparison.Ordinal))
        {
            key = key[..^".gamma".Length] + ".weight";
        }
        else if (key.EndsWith(".beta", StringComparison.Ordinal))
        {
            key = key[..^".beta".Length] + ".bias";
        }

        if (gpt2)
        {
            return key.StartsWith("h.", StringComparison.Ordinal) || key is "wte.weight" or "wpe.weight" || key.StartsWith("ln_f.", StringComparison.Ordinal)
                ? "transformer." + key
                : key;
        }

        return key.StartsWith("embeddings.", StringComparison.Ordinal) || key.StartsWith("encoder.", StringComparison.Ordinal) || key.StartsWith("pooler.", StringComparison.Ordinal)
            ? "bert." + key
            : key;
    }

    /// <summary>
    /// Whether a tensor of a Hugging Face file that this model does not use is expected there and safe to ignore: a
    /// tied duplicate of the word embedding, a non-persistent buffer older versions saved (position ids, GPT-2's
    /// causal-mask <c>attn.bias</c>/<c>attn.masked_bias</c>), or the head of another BERT task (pre-training's
    /// next-sentence head, the MLM head when fine-tuning a classifier, the pooler when training MLM).
    /// </summary>
    public static bool IsKnownExtra(string canonical, HuggingFaceArchitecture target) => target switch
    {
        HuggingFaceArchitecture.Gpt2LMHeadModel => canonical == "lm_head.weight"
            || canonical.EndsWith(".attn.bias", StringComparison.Ordinal) || canonical.EndsWith(".attn.masked_bias", StringComparison.Ordinal),
        _ => canonical == "bert.embeddings.position_ids" || canonical.StartsWith("cls.", StringComparison.Ordinal) || canonical.StartsWith("bert.pooler.", StringComparison.Ordinal),
    };

    /// <summary>Whether a tensor of <paramref name="target"/> may be missing from a file of <paramref name="source"/> and start fresh: a task head the source does not have.</summary>
    public static bool MayStartFresh(string hfName, HuggingFaceArchitecture source, HuggingFaceArchitecture target) =>
        source != target && target switch
        {
            HuggingFaceArchitecture.BertForSequenceClassification or HuggingFaceArchitecture.BertForMeanPooledSequenceClassification => hfName.StartsWith("bert.pooler.", StringComparison.Ordinal) || hfName.StartsWith("classifier.", StringComparison.Ordinal),
            HuggingFaceArchitecture.BertForMaskedLM => hfName.StartsWith("cls.", StringComparison.Ordinal),
            _ => false,
        };

    private static void Pair(List<WeightEntry> map, string ours, string hf)
    {
        map.Add(new($"{ours}.weight", $"{hf}.weight", WeightTransform.Copy));
        map.Add(new($"{ours}.bias", $"{hf}.bias", WeightTransform.Copy));
    }

    private static void Conv1D(List<WeightEntry> map, string ours, string hf)
    {
        map.Add(new($"{ours}.weight", $"{hf}.weight", WeightTransform.Transpose));
        map.Add(new($"{ours}.bias", $"{hf}.bias", WeightTransform.Copy));
    }
}
